"""Delivery of events to webhooks and mail, from the event log (the transactional outbox), by the lease holder.

:meth:`Deliverer.step` is one iteration (the poller host's delivery thread paces it; never the poll cycle, so a
dead receiver never delays a cycle):

1. **Fan out** (fenced): the events after the deliverer's cursor (``settings.delivery_cursor``) become one
   ``deliveries`` row per target (events.targets: every site hook, and the job's own notify when it asks for that
   change), with the body made once; the cursor moves past them in the same transaction. A holder killed here
   loses nothing: the next holder reads from the same cursor, and a row made twice is made once (UNIQUE).
2. **Send**: due rows go to a bounded pool of sender threads (``events.max_parallel``), each attempt bounded by
   ``events.timeout``; the step never waits for them.
3. **Record** (fenced): finished attempts mark their rows delivered, or pending again after a backoff
   (``retry_backoff`` doubling up to ``retry_max_delay``), or failed once they have been retried for
   ``retry_for`` seconds (or can never succeed: a refused destination, a hook no longer configured). A holder
   killed or replaced before recording leaves the row pending: it is sent again (at least once; receivers dedup by
   the event id). A holder that lost the lease records nothing (LeaseLost): the new holder owns the rows.
"""
from __future__ import annotations

import concurrent.futures as cf
import http.client
import logging
import smtplib
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Callable

from .. import __version__
from .. import events as EV
from ..backends import get_backend
from ..config import Config, expand
from ..db.core import Database, epoch_to_time, parse_time
from ..db.repository import Repository
from ..model import Delivery, FeedEvent
from .lease import Lease, LeaseLost

log = logging.getLogger("metasched.deliver")

CURSOR_KEY = "delivery_cursor"
FAN_OUT_BATCH = 500


@dataclass(frozen=True)
class Outcome:
    ok: bool
    error: str | None = None
    permanent: bool = False         # retrying cannot help: failed at once


class Deliverer:
    def __init__(self, db: Database, config: Config, lease_of: Callable[[], Lease | None], *,
                 wall: Callable[[], float] = time.time, resolve=None):
        self.db = db
        self.repo = Repository(db)
        self.config = config
        self.ev = config.events
        self.lease_of = lease_of
        self.wall = wall
        self.resolve = resolve
        self.pool = cf.ThreadPoolExecutor(self.ev.max_parallel, thread_name_prefix="metasched-deliver")
        self.inflight: dict[int, tuple[Delivery, cf.Future]] = {}
        self.hooks = {h.name: h for h in self.ev.webhooks}
        self._backends: dict[int, object] = {}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- one iteration --------------------------------------------------------------------------------
    def step(self) -> dict:
        """Fan out new events, record finished attempts, start due ones. Nothing unless we hold the lease."""
        lease = self.lease_of()
        if lease is None or not lease.valid():
            self.inflight.clear()          # whatever they answer, the holder's rows are the new holder's now
            return {}
        now = self.wall()
        try:
            made = self.fan_out(lease, now)
            recorded = self.record(lease, now)
        except LeaseLost as exc:
            log.warning("lost the lease while delivering (%s): this worker stops delivering", exc)
            self.inflight.clear()
            return {}
        started = self.send(now)
        return {"made": made, "recorded": recorded, "started": started}

    def fan_out(self, lease: Lease, now: float) -> int:
        with self.db.read():
            setting = self.repo.get_setting(CURSOR_KEY)
            cursor = int(setting.value) if setting else 0
            if self.repo.latest_event_id() <= cursor:
                return 0
            page = self.repo.event_feed(after=cursor, limit=FAN_OUT_BATCH)
            notify = self.repo.job_notify_among({e.job_id for e in page if e.job_id is not None})
            rows = []
            jobs: dict[int, object] = {}
            for ev in page:
                targets = EV.targets(ev, notify.get(ev.job_id), self.config)
                if targets:
                    body = self._body(ev, jobs)
                    rows += [(ev, channel, hook, address, body) for channel, hook, address in targets]
        if not page:
            return 0
        iso = epoch_to_time(now)
        with lease.fenced():
            for ev, channel, hook, address, body in rows:
                self.repo.insert_delivery(event_id=ev.id, job_id=ev.job_id, channel=channel, hook=hook,
                                          address=address, body=body, now=iso)
            self.repo.put_setting(key=CURSOR_KEY, value=page[-1].id, actor="poller", now=iso)
        return len(rows)

    def _body(self, ev: FeedEvent, jobs: dict) -> dict:
        """The event as every reader sees it, plus (job events) where the job's output is and its queue's name."""
        body = EV.event_doc(ev)
        if ev.kind != "job":
            return body
        if ev.job_id not in jobs:
            job = self.repo.get_job(ev.job_id)
            queue = self.repo.get_queue(job.queue_id) if job else None
            outputs = None
            if job is not None and queue is not None:
                try:
                    files = self._backend(queue).output_files(job)
                    outputs = {"stdout": files.stdout, "stderr": files.stderr}
                except Exception:          # noqa: BLE001 - a job the backend cannot place still gets its event
                    log.exception("output files of job %s", ev.job_id)
            jobs[ev.job_id] = (outputs, queue.name if queue else None)
        body["outputs"], body["queue_name"] = jobs[ev.job_id]
        return body

    def _backend(self, queue):
        b = self._backends.get(queue.id)
        if b is None:
            opts = next((s.options for s in self.config.schedulers if s.name.lower() == queue.name.lower()), {})
            b = self._backends[queue.id] = get_backend(queue.type, opts)
        return b

    def record(self, lease: Lease, now: float) -> int:
        done = [(d, f.result()) for d, f in list(self.inflight.values()) if f.done()]
        if not done:
            return 0
        iso = epoch_to_time(now)
        with lease.fenced():
            for d, outcome in done:
                attempts = d.attempts + 1
                if outcome.ok:
                    self.repo.record_delivery(id=d.id, state="delivered", attempts=attempts, next_at=d.next_at,
                                              last_error=d.last_error, delivered_at=iso)
                    continue
                age = now - parse_time(d.created_at).timestamp()
                delay = min(self.ev.retry_backoff * 2 ** (attempts - 1), self.ev.retry_max_delay)
                final = outcome.permanent or age >= self.ev.retry_for
                self.repo.record_delivery(
                    id=d.id, state="failed" if final else "pending", attempts=attempts,
                    next_at=d.next_at if final else epoch_to_time(now + delay), delivered_at=None,
                    last_error=(outcome.error or "failed")[:500] + (
                        "" if not final or outcome.permanent else f" (given up after {self.ev.retry_for:g} s)"))
        for d, _ in done:
            del self.inflight[d.id]
        return len(done)

    def send(self, now: float) -> int:
        room = self.ev.max_parallel - len(self.inflight)
        if room <= 0:
            return 0
        with self.db.read():
            due = self.repo.due_deliveries(now=epoch_to_time(now), limit=room + len(self.inflight))
        started = 0
        for d in due:
            if d.id in self.inflight or len(self.inflight) >= self.ev.max_parallel:
                continue
            self.inflight[d.id] = (d, self.pool.submit(self.attempt, d))
            started += 1
        return started

    @property
    def busy(self) -> bool:
        return bool(self.inflight)

    # -- one attempt (in a sender thread) -------------------------------------------------------------
    def attempt(self, d: Delivery) -> Outcome:
        try:
            if d.channel == "email":
                return self.mail(d)
            return self.post(d)
        except Exception as exc:          # noqa: BLE001 - an attempt's failure is a value
            return Outcome(False, f"{type(exc).__name__}: {exc}")

    def post(self, d: Delivery) -> Outcome:
        if d.hook is not None:
            hook = self.hooks.get(d.hook)
            if hook is None:
                return Outcome(False, f"site webhook {d.hook!r} is no longer configured", permanent=True)
            secret = hook.secret
        else:
            secret = d.secret or ""
        kw = {"resolve": self.resolve} if self.resolve is not None else {}
        problem = EV.destination_problem(d.address, self.config, **kw)
        if problem:
            return Outcome(False, problem, permanent="cannot resolve" not in problem)
        data = EV.body_bytes(d.body)
        parts = urllib.parse.urlsplit(d.address)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(parts.hostname, parts.port, timeout=self.ev.timeout)
        try:
            conn.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body=data,
                         headers={"Content-Type": "application/json", "User-Agent": f"metasched/{__version__}",
                                  EV.EVENT_ID_HEADER: str(d.event_id), "X-Metasched-Event": d.body.get("type", ""),
                                  "X-Metasched-Delivery": str(d.id), EV.SIGNATURE_HEADER: EV.sign(secret, data)})
            resp = conn.getresponse()
            resp.read(65536)
        except (OSError, http.client.HTTPException) as exc:
            return Outcome(False, f"{parts.hostname}: {getattr(exc, 'strerror', None) or exc or type(exc).__name__}")
        finally:
            conn.close()
        if 200 <= resp.status < 300:
            return Outcome(True)
        return Outcome(False, f"HTTP {resp.status} {resp.reason}".strip())

    def mail(self, d: Delivery) -> Outcome:
        smtp = self.ev.smtp
        if not smtp.host:
            return Outcome(False, "events.smtp.host is not configured", permanent=True)
        msg = EV.mail(d.body, smtp.sender, d.address, host=smtp.host)
        try:
            with smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout) as s:
                s.ehlo()
                if smtp.starttls:
                    s.starttls(context=ssl.create_default_context())
                    s.ehlo()
                if smtp.username:
                    with open(expand(smtp.password_file), encoding="utf-8") as f:
                        s.login(smtp.username, f.read().strip())
                s.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            return Outcome(False, f"the relay refused {d.address}: {exc.recipients}", permanent=True)
        except (OSError, smtplib.SMTPException) as exc:
            return Outcome(False, f"{smtp.host}:{smtp.port}: {exc}")
        return Outcome(True)
