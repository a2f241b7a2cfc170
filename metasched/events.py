"""Events out: what an event looks like to its readers, who is told of which event, and how a message is signed.

Plain functions over model values, shared by the API (``GET /events``, the stream, ``notify`` at submit), the
deliverer (metasched/engine/deliver.py: webhooks and mail from the outbox) and their tests:

- :func:`event_doc` is THE shape of an event, the same in ``GET /events``, in the stream's ``data:`` lines and in
  a webhook's body (which adds where the job's output is);
- :func:`parse_notify` checks a job's ``notify`` request (every error names its field);
- :func:`wanted` says whether a job's ``notify.on`` asks for an event, :func:`targets` where an event goes;
- :func:`sign` is the X-Metasched-Signature of a body; :func:`verify` what a receiver does with it;
- :func:`destination_problem` refuses webhook URLs that point at loopback, this host or this service;
- :func:`mail` is the plain-text message for a job event.
"""
from __future__ import annotations

import email.message
import email.utils
import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
import urllib.parse

from .config import Config, mail_address_problem, webhook_url_problem
from .errors import Invalid
from .model import NOTIFY_ON, FeedEvent, JobNotify

FINAL = ("COMPLETED", "ERROR", "CANCELLED")
SIGNATURE_HEADER = "X-Metasched-Signature"      # sha256=<hex of HMAC-SHA256(secret, body)>
EVENT_ID_HEADER = "X-Metasched-Event-Id"        # the event's id: receivers dedup by it (delivery is at least once)

# sbatch's --mail-type names, and ours (the CLI maps them)
MAIL_TYPES = {"BEGIN": ("start",), "END": ("end",), "FAIL": ("fail",), "ALL": NOTIFY_ON, "NONE": (),
              "START": ("start",)}


# -- the shape of an event -------------------------------------------------------------------------------

def event_doc(ev: FeedEvent) -> dict:
    if ev.kind == "job":
        return {"id": ev.id, "type": "job", "at": ev.at, "actor": ev.actor,
                "job": {"id": ev.job_id, "name": ev.job_name, "owner": ev.owner, "queue": ev.queue_id},
                "old_status": ev.old_status, "new_status": ev.new_status, "reason": ev.reason,
                "exit_code": ev.exit_code}
    return {"id": ev.id, "type": "cluster", "at": ev.at, "actor": ev.actor, "kind": ev.cluster_kind,
            "detail": ev.detail or {}}


def may_see(user: str | None, is_admin: bool, ev: FeedEvent) -> bool:
    """A user sees their own jobs' events and every cluster event; admins see everything."""
    return is_admin or ev.kind == "cluster" or (user is not None and ev.owner == user)


def sse(ev: FeedEvent) -> bytes:
    """One server-sent event: its id (what Last-Event-ID resumes from), its type and the event as JSON."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (ev.id, ev.kind.encode(), json.dumps(event_doc(ev)).encode())


# -- who is told ---------------------------------------------------------------------------------------------

def wanted(on, old: str | None, new: str | None) -> bool:
    """Whether a change old -> new is one of ``on``: start (it began RUNNING), end (it reached a final state),
    fail (it reached ERROR). A note without a change of state is never one."""
    if new is None or old == new:
        return False
    return (("start" in on and new == "RUNNING") or ("end" in on and new in FINAL)
            or ("fail" in on and new == "ERROR"))


def targets(ev: FeedEvent, notify: JobNotify | None, config: Config) -> list[tuple[str, str | None, str]]:
    """Where an event goes: (channel, site hook name or None for the job's own notify, address)."""
    out = []
    for h in config.events.webhooks:
        if ev.kind == "job" or h.cluster:
            out.append(("webhook", h.name, h.url))
    if ev.kind == "job" and notify is not None and wanted(notify.on, ev.old_status, ev.new_status):
        if notify.webhook:
            out.append(("webhook", None, notify.webhook))
        if notify.email:
            out.append(("email", None, notify.email))
    return out


def parse_notify(raw: dict, config: Config, job_id: int = 0) -> JobNotify:
    """A job's ``notify`` request, checked (an Invalid naming the field otherwise). ``on`` defaults to
    [end]; a webhook without a secret gets a random one (shown to the job's owner with the job)."""
    on = raw.get("on", ["end"])
    if not isinstance(on, list) or not all(isinstance(x, str) for x in on):
        raise Invalid(f"notify.on: expected a list of {', '.join(NOTIFY_ON)}", field="notify.on")
    wrong = [x for x in on if x not in NOTIFY_ON]
    if wrong:
        raise Invalid(f"notify.on: {wrong[0]!r} is not one of {', '.join(NOTIFY_ON)}", field="notify.on")
    email_addr, url, secret = raw.get("email"), raw.get("webhook"), raw.get("secret")
    if email_addr is None and url is None:
        raise Invalid("notify: give an email address, a webhook URL, or both", field="notify")
    if email_addr is not None:
        problem = mail_address_problem(email_addr)
        if problem:
            raise Invalid(f"notify.email: {problem}, got {email_addr!r}", field="notify.email")
        if not config.events.smtp.host:
            raise Invalid("notify.email: this service sends no mail (events.smtp.host is not configured)",
                          field="notify.email")
    if url is not None:
        problem = webhook_url_problem(url)
        if problem:
            raise Invalid(f"notify.webhook: {problem}", field="notify.webhook")
        problem = destination_problem(url, config)
        if problem:
            raise Invalid(f"notify.webhook: {problem}", field="notify.webhook")
    if secret is not None and url is None:
        raise Invalid("notify.secret: only with notify.webhook", field="notify.secret")
    if url is not None and not secret:
        secret = secrets.token_hex(16)
    return JobNotify(job_id=job_id, on=tuple(dict.fromkeys(on)), email=email_addr, webhook=url, secret=secret)


# -- where a webhook may point -------------------------------------------------------------------------------

def _own_addresses() -> set:
    """This host's addresses, as far as its name says (besides loopback, which is checked as such)."""
    out = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            out.add(ipaddress.ip_address(info[4][0].split("%")[0]))
    except OSError:
        pass
    return out


def destination_problem(url: str, config: Config, resolve=socket.getaddrinfo, own=_own_addresses) -> str | None:
    """Why a webhook may not be sent to ``url`` (checked at submit and again before every attempt), or None.

    Never to this service itself (this host, the service's port); not to loopback, to this host's own
    addresses or to an unspecified address unless ``events.allow_loopback``."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = resolve(host, port, 0, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        return f"cannot resolve {host}: {getattr(exc, 'strerror', None) or exc}"
    mine = None
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_unspecified:
            return f"{host} is an unspecified address ({ip})"
        if ip.is_loopback:
            local = "loopback"
        else:
            mine = own() if mine is None else mine
            local = "this host" if ip in mine else None
        if local and port == config.server.port:
            return f"{url} points at this service itself ({ip} port {port})"
        if local and not config.events.allow_loopback:
            return f"{host} points at {local} ({ip}): webhooks may not, unless events.allow_loopback is set"
    return None


# -- signing -------------------------------------------------------------------------------------------------

def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    return header is not None and hmac.compare_digest(sign(secret, body), header)


def body_bytes(body: dict) -> bytes:
    """The exact bytes a webhook receives (and its signature covers)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


# -- mail ----------------------------------------------------------------------------------------------------

def mail(body: dict, sender: str, to: str, host: str = "metasched") -> email.message.EmailMessage:
    """Plain text: the job, its state, exit code, reason, and where its output is."""
    job = body.get("job") or {}
    state = body.get("new_status")
    exit_code = body.get("exit_code")
    outputs = body.get("outputs") or {}
    msg = email.message.EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = f"metasched job {job.get('id')} ({_one_line(job.get('name'))}): {state}"
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Message-ID"] = f"<event-{body.get('id')}.{job.get('id')}@{host}>"
    msg[EVENT_ID_HEADER] = str(body.get("id"))
    lines = [
        f"Job:       {job.get('id')} ({_one_line(job.get('name'))}), owner {job.get('owner')}, queue {body.get('queue_name') or job.get('queue')}",
        f"State:     {state}" + (f" (was {body.get('old_status')})" if body.get("old_status") else ""),
        f"Exit code: {'-' if exit_code is None else exit_code}",
        f"Reason:    {_one_line(body.get('reason')) or '-'}",
        f"Output:    {outputs.get('stdout') or 'not known yet (the scheduler names it after its own job id)'}",
    ]
    if outputs.get("stderr"):
        lines.append(f"Errors:    {outputs['stderr']}")
    lines += ["", f"At {body.get('at')} (event {body.get('id')}). `metasched show {job.get('id')}` says more."]
    msg.set_content("\n".join(lines) + "\n")
    return msg


def _one_line(text) -> str:
    return "" if text is None else " ".join(str(text).split())
