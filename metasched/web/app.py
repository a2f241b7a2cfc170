"""The Falcon app: factory, identity middleware, resources, the route table, error mapping.

Resources are thin: parse input, call one Services method, set resp.media/status/location. Domain
errors are mapped to HTTP once, in ``_handle_domain_error``; resources never catch exceptions. Every route
is one entry of ``ROUTES`` (see web/routes.py): its template, its resource and its OpenAPI operations.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import urllib.parse

import falcon

from .. import __version__, errors as E
from ..identity import ANONYMOUS, peer_uid
from ..model import JobStatus
from ..services import History, Services, days_before, utc_text
from . import openapi as O
from . import schemas as S
from . import views as V
from .routes import ID, TASK, Route
from .session import SAFE_METHODS, refuse_cross_site, session_caller
from .stream import EventHub
from .validation import BAD_TEXT, TEXT_RULE, check_text, parse_body, validate

log = logging.getLogger("metasched.web")

STATUS_OF = [
    (E.Invalid, falcon.HTTP_400), (E.Unauthenticated, falcon.HTTP_401), (E.Forbidden, falcon.HTTP_403),
    (E.NotFound, falcon.HTTP_404), (E.Conflict, falcon.HTTP_409), (E.Unavailable, falcon.HTTP_503),
]


class IdConverter(falcon.routing.BaseConverter):
    """1..2**63-1 in plain ASCII digits without a leading zero. Falcon's ``int`` converter takes what
    Python's int() takes: '+1', '01', '1_0' and '１' (a full-width digit) all named job 1 or 10. Anything
    else in an id position is a 404, never a 500."""

    _RE = re.compile(r"[1-9][0-9]{0,18}")

    def convert(self, value: str):
        if not self._RE.fullmatch(value):
            return None
        n = int(value)
        return n if n <= 9223372036854775807 else None


class TaskConverter(IdConverter):
    """An array task's index, 0..999999999, in plain ASCII digits without a leading zero (as IdConverter)."""

    _RE = re.compile(r"0|[1-9][0-9]{0,8}")


_ENCODER = json.JSONEncoder(check_circular=False)


def _dumps(media) -> bytes:
    """Response JSON, ASCII only (\\u escapes for the rest): about 15% cheaper to encode than UTF-8 for
    a page of jobs, and a text that UTF-8 cannot encode (a lone surrogate stored before the API refused
    them) is sent as its escape instead of failing the response: every stored job stays readable,
    listable and cancellable.

    The same text as ``json.dumps(media)``, from one encoder made once (json.dumps makes one per call when
    given any option) without the check for circular containers: a view builds a tree of fresh dicts and
    lists, never a cycle (a cycle would be a RecursionError, a 500, instead of a ValueError, a 500)."""
    return _ENCODER.encode(media).encode()


# -- error mapping ------------------------------------------------------------------------------

def error_body(status: str, title: str, description: str, details: dict | None = None) -> dict:
    """title, description and the HTTP status always; a domain error's details beside them, never over them."""
    body = {k: v for k, v in (details or {}).items() if k not in ("title", "description", "status")}
    body.update(title=title, description=description, status=int(status.split()[0]))
    return body


def _handle_domain_error(req, resp, ex: E.MetaschedError, params):
    status = next((s for cls, s in STATUS_OF if isinstance(ex, cls)), falcon.HTTP_500)
    resp.status = status
    resp.media = error_body(status, ex.title, ex.message, ex.details)
    if isinstance(ex, E.Unauthenticated):
        resp.set_header("WWW-Authenticate", 'Bearer realm="metasched"')


def _handle_unexpected(req, resp, ex, params):
    if isinstance(ex, falcon.HTTPError):
        raise ex
    log.exception("unexpected error on %s %s", req.method, req.path)
    resp.status = falcon.HTTP_500
    resp.media = error_body(falcon.HTTP_500, "internal error", "the service failed; see its log")


def _serialize_http_error(req, resp, ex: falcon.HTTPError):
    code = int(str(ex.status).split()[0])
    default = {404: f"no resource at {req.path}", 405: f"{req.method} is not allowed on {req.path}"}
    resp.content_type = falcon.MEDIA_JSON
    resp.text = json.dumps(error_body(str(ex.status), ex.title or "error",
                                       ex.description or default.get(code, ex.title or "")))


# -- middleware ---------------------------------------------------------------------------------

class IdentityMiddleware:
    """Sets req.context.caller from the transport (see metasched.identity)."""

    def __init__(self, services: Services):
        self.services = services
        self.authority = services.authority
        self.header = services.config.auth.proxy_header

    def process_request(self, req, resp):
        req.context.caller = ANONYMOUS
        auth = req.get_header("Authorization")
        if auth:
            scheme, _, secret = auth.partition(" ")
            if scheme.lower() != "bearer" or not secret.strip():
                raise E.Unauthenticated("Authorization header must be 'Bearer <token>'")
            req.context.caller = self.services.token_caller(secret.strip())
            return
        sock = req.env.get("gunicorn.socket")
        uid = peer_uid(sock) if sock is not None else req.env.get("metasched.test_peer_uid")
        proxy = uid is not None and self.authority.proxy_uid is not None and uid == self.authority.proxy_uid
        user = req.get_header(self.header) if proxy else None
        if user:
            if not self.authority.is_known_user(user):
                raise E.Unauthenticated(f"{self.header}: unknown user {user!r}")
            if req.method not in SAFE_METHODS:
                refuse_cross_site(req)      # the browser's SSO login is ambient authority too
            req.context.caller = self.authority.caller(user, "proxy")
            return
        session = session_caller(self.services, req)     # the dashboard's cookie, CSRF-checked (web/session.py)
        if session is not None:
            req.context.caller = session
            return
        if uid is None or proxy:
            return
        caller = self.authority.socket_caller(uid)
        if caller is not None:
            req.context.caller = caller

    def process_resource(self, req, resp, resource, params):
        """Anonymous callers reach only public resources: they get their 401 before their body is
        read and validated (a 400 would tell them about the API before they proved who they are).
        The services check again; this is the early, uniform answer."""
        if resource is not None and not getattr(resource, "public", False):
            Services.require(req.context.caller)


def body_too_large(length: int, limit: int) -> str:
    """The 413's description (here and in the worker, which refuses a large body before reading it)."""
    return f"request body is {length} bytes; the limit is {limit}"


class BodyLimitMiddleware:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes

    def process_request(self, req, resp):
        if req.method in ("POST", "PUT", "PATCH") and req.content_length:
            if req.content_length > self.max_bytes:
                raise falcon.HTTPContentTooLarge(title="body too large",
                                                 description=body_too_large(req.content_length, self.max_bytes))


def read_body(req, schema: dict, optional: bool = False) -> dict:
    """Parse and validate the JSON body against its published schema."""
    if not req.content_length:
        if req.get_header("Transfer-Encoding"):
            raise falcon.HTTPLengthRequired(title="length required",
                                            description="send the body with a Content-Length")
        if optional:
            return {}
        raise E.Invalid("request body required: a JSON object")
    if req.content_type is None or req.content_type.split(";")[0].strip().lower() != "application/json":
        raise falcon.HTTPUnsupportedMediaType(title="unsupported media type",
                                              description="send the body as Content-Type: application/json")
    body = parse_body(req.bounded_stream.read())
    if not isinstance(body, dict):
        raise E.Invalid("body: expected a JSON object", field="body")
    check_text(body)
    return validate(body, schema)


# -- resources ----------------------------------------------------------------------------------

class Base:
    def __init__(self, services: Services):
        self.svc = services
        self.page_limit = services.config.server.page_limit    # a listing's page size when none is asked


class RootResource(Base):
    public = True     # tells anonymous callers that they are anonymous

    def on_get(self, req, resp):
        resp.media = V.status(self.svc.status(req.context.caller), __version__)


class ModeResource(Base):
    def on_get(self, req, resp):
        resp.media = V.mode(self.svc.get_mode(req.context.caller))

    def on_put(self, req, resp):
        params = _query(req, {"dry_run"})
        if _bool_param(params, "dry_run"):
            resp.media = V.dry_run(self.svc.dry_run_mode(req.context.caller, read_body(req, S.MODE_PUT)))
        else:
            resp.media = V.mode(self.svc.set_mode(req.context.caller, read_body(req, S.MODE_PUT)))


class NodesResource(Base):
    def on_get(self, req, resp):
        resp.media = {"items": [V.node(n) for n in self.svc.list_nodes(req.context.caller)]}


class MasterNodeResource(Base):
    def on_get(self, req, resp):
        resp.media = V.node(self.svc.get_master_node(req.context.caller))


class NodeResource(Base):
    def on_get(self, req, resp, node_id):
        resp.media = V.node(self.svc.get_node(req.context.caller, node_id))


class QueuesResource(Base):
    def on_get(self, req, resp):
        resp.media = {"items": [V.queue(q) for q in self.svc.list_queues(req.context.caller)]}


class QueueResource(Base):
    def on_get(self, req, resp, queue_id):
        resp.media = V.queue(self.svc.get_queue(req.context.caller, queue_id))


class JobsResource(Base):
    def on_post(self, req, resp):
        shown = self.svc.submit_job(req.context.caller, read_body(req, S.JOB_SUBMIT))
        resp.status = falcon.HTTP_201
        resp.location = f"/jobs/{shown.job.id}"
        resp.media = V.job(*shown)

    def on_get(self, req, resp):
        params = _query(req, {"status", "queue", "owner", "after", "before", "limit", "order", "since", "until",
                              "include"})
        statuses = _statuses(params)
        order = params.get("order", "oldest")
        if order not in ("oldest", "newest"):
            raise E.Invalid(f"order: expected oldest or newest, got {order!r}", field="order")
        # since / until: the history (issue 15), the jobs that ended in that window, newest end first, paged with
        # a before cursor of its own (<finished_at>,<id>); else the listing by id, oldest or newest first
        history = _history(params)
        if history is not None:
            if "after" in params:
                raise E.Invalid("after: a history listing (since, until) pages with before", field="after")
            if params.get("order", "newest") != "newest":
                raise E.Invalid("order: a history listing (since, until) is newest end first", field="order")
        elif ("after" if order == "newest" else "before") in params:
            wrong = "after" if order == "newest" else "before"
            raise E.Invalid(f"{wrong}: the cursor of order={'oldest' if wrong == 'after' else 'newest'}; "
                            f"with order={order} give {'before' if wrong == 'after' else 'after'}", field=wrong)
        after = _int_param(params, "after", 0, 0)
        before = _int_param(params, "before", 0, 1) if "before" in params and history is None else None
        limit = _int_param(params, "limit", self.page_limit, 1, 1000)
        queue = params.get("queue") or None
        metrics = _include(params)
        result = self.svc.list_jobs(req.context.caller, statuses=statuses, queue=queue,
                                    owner=params.get("owner") or None, after=after, limit=limit,
                                    newest=order == "newest", before=before, history=history,
                                    include_metrics=metrics)
        item = (lambda x: V.job(x.job, x.tasks, result.metrics.get(x.job.id))) if metrics else (lambda x: V.job(*x))
        if history is not None:
            resp.media = V.page(result, item, "/jobs", dict(params, limit=str(limit)),
                                cursor=lambda x: V.history_cursor(x.job), cursor_param="before")
        else:
            resp.media = V.page(result, item, "/jobs", dict(params, limit=str(limit)), cursor=lambda x: x.job.id,
                                cursor_param="before" if order == "newest" else "after")


class ForeignJobsResource(Base):
    """Jobs submitted directly to the schedulers (plain qsub / sbatch): seen, counted, never touched."""

    def on_get(self, req, resp):
        params = _query(req, {"queue", "owner", "after", "limit"})
        after = _int_param(params, "after", 0, 0)
        limit = _int_param(params, "limit", self.page_limit, 1, 1000)
        result = self.svc.list_foreign_jobs(req.context.caller, queue=params.get("queue") or None,
                                            owner=params.get("owner") or None, after=after, limit=limit)
        resp.media = V.page(result, V.foreign_job, "/foreign-jobs", dict(params, limit=str(limit)))


class JobResource(Base):
    def on_get(self, req, resp, job_id):
        metrics = _include(_query(req, {"include"}))
        resp.media = V.job_detail(self.svc.job_detail(req.context.caller, job_id, include_metrics=metrics))

    def on_patch(self, req, resp, job_id):
        resp.media = V.job(*self.svc.edit_job(req.context.caller, job_id, read_body(req, S.JOB_PATCH)))

    def on_delete(self, req, resp, job_id):
        shown = self.svc.cancel_job(req.context.caller, job_id)
        resp.status = falcon.HTTP_200 if shown.job.status is JobStatus.CANCELLED else falcon.HTTP_202
        resp.media = V.job(*shown)


class JobHoldResource(Base):
    def on_post(self, req, resp, job_id):
        resp.media = V.job(*self.svc.hold_job(req.context.caller, job_id))


class JobReleaseResource(Base):
    def on_post(self, req, resp, job_id):
        resp.media = V.job(*self.svc.release_job(req.context.caller, job_id))


class JobOutputResource(Base):
    """A job's stdout or stderr, read as its owner on its scheduler's master node: raw bytes, a bounded piece
    at a time (offset: where to start, negative from the end; length: the most bytes)."""

    def on_get(self, req, resp, job_id):
        params = _query(req, {"stream", "offset", "length", "task"})
        stream = params.get("stream", "stdout")
        if stream not in ("stdout", "stderr"):
            raise E.Invalid(f"stream: expected stdout or stderr, got {stream!r}", field="stream")
        offset = _signed_param(params, "offset", 0)
        most = self.svc.config.server.output_max_bytes
        length = _int_param(params, "length", most, 1, most)
        task = _int_param(params, "task", None, 0, 999999999) if "task" in params else None
        chunk = self.svc.read_output(req.context.caller, job_id, stream, offset, length, task)
        resp.content_type = "application/octet-stream"
        resp.data = chunk.data
        resp.set_header("X-Output-Size", str(chunk.size))
        resp.set_header("X-Output-Offset", str(chunk.offset))
        resp.set_header("X-Output-Path", urllib.parse.quote(chunk.path, safe="/"))


class JobEventsResource(Base):
    def on_get(self, req, resp, job_id):
        params = _query(req, {"task"})
        task = _int_param(params, "task", None, 0) if "task" in params else None
        resp.media = V.history(self.svc.job_history(req.context.caller, job_id, task))


class JobWhyResource(Base):
    def on_get(self, req, resp, job_id, task=None):
        resp.media = V.why(self.svc.why(req.context.caller, job_id, task))


class EventsResource(Base):
    """The event log, a page at a time: your jobs' events (admins: everyone's) and the cluster's."""

    def on_get(self, req, resp):
        params = _query(req, {"after", "limit"})
        after = _int_param(params, "after", 0, 0)
        limit = _int_param(params, "limit", self.page_limit, 1, 1000)
        resp.media = V.event_page(self.svc.list_events(req.context.caller, after=after, limit=limit), "/events", limit)


class EventStreamResource(Base):
    """The event log as server-sent events (see web/stream.py); resumes after Last-Event-ID (or ?after=)."""

    def __init__(self, services: Services):
        super().__init__(services)
        self.hub = EventHub(services)     # one per app: its streams share the probe of the database

    def on_get(self, req, resp):
        from .stream import EventStream
        params = _query(req, {"after"})
        after = _int_param(params, "after", 0, 0) if "after" in params else None
        last = req.get_header("Last-Event-ID")
        if last is not None:
            if not re.fullmatch(r"[0-9]{1,18}", last.strip()):
                raise E.Invalid(f"Last-Event-ID: expected an event id, got {last!r}", field="Last-Event-ID")
            after = int(last)
        caller = req.context.caller
        if after is None:
            after = self.svc.latest_event_id()     # from now on
        self.svc.require(caller)
        resp.content_type = "text/event-stream"
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Accel-Buffering", "no")      # nginx: pass each event on at once
        resp.stream = EventStream(self.hub, caller, after, req.env.get("metasched.stream.wake"),
                                  self.svc.config.events.stream_heartbeat)


class JobMetricsResource(Base):
    """A job's CPU and memory over time, as the node agents measured it (issue 15)."""

    def on_get(self, req, resp, job_id):
        params = _query(req, {"since", "until", "after", "limit"})
        since, until = _window(params)
        result = self.svc.job_metrics(req.context.caller, job_id, since=since, until=until,
                                      after=_int_param(params, "after", 0, 0),
                                      limit=_int_param(params, "limit", 100, 1, 1000))
        resp.media = V.job_metrics(result, params)


class NodeMetricsResource(Base):
    def on_get(self, req, resp, node_id):
        params = _query(req, {"since", "until", "after", "limit"})
        since, until = _window(params)
        result = self.svc.node_metrics(req.context.caller, node_id, since=since, until=until,
                                       after=_int_param(params, "after", 0, 0),
                                       limit=_int_param(params, "limit", 100, 1, 1000))
        resp.media = V.node_metrics(result, params)


class UsageResource(Base):
    """What the jobs that ended in a window used, per user or per queue, and the CPU split per node."""

    def on_get(self, req, resp):
        params = _query(req, {"since", "until", "group_by", "owner"})
        until = _time_param(params, "until") or self.svc.now()
        since = _time_param(params, "since") or days_before(until, 1)
        if since >= until:
            raise E.Invalid("since: must be before until", field="since")
        report = self.svc.usage_report(req.context.caller, since=since, until=until,
                                       group_by=params.get("group_by", "user"), owner=params.get("owner") or None)
        resp.media = V.usage(report)


class TasksResource(Base):
    def on_get(self, req, resp, job_id):
        params = _query(req, {"status", "after", "limit"})
        statuses = _statuses(params)
        after = _int_param(params, "after", 0, 0)
        limit = _int_param(params, "limit", self.page_limit, 1, 1000)
        result = self.svc.list_tasks(req.context.caller, job_id, statuses=statuses, after=after, limit=limit)
        resp.media = V.page(result, V.task, f"/jobs/{job_id}/tasks", dict(params, limit=str(limit)),
                            cursor=lambda t: t.task)


class TaskResource(Base):
    def on_get(self, req, resp, job_id, task):
        resp.media = V.task(self.svc.get_task(req.context.caller, job_id, task))

    def on_delete(self, req, resp, job_id, task):
        t = self.svc.cancel_task(req.context.caller, job_id, task)
        resp.status = falcon.HTTP_200 if t.status is JobStatus.CANCELLED else falcon.HTTP_202
        resp.media = V.task(t)


class TaskHoldResource(Base):
    def on_post(self, req, resp, job_id, task):
        resp.media = V.task(self.svc.hold_task(req.context.caller, job_id, task))


class TaskReleaseResource(Base):
    def on_post(self, req, resp, job_id, task):
        resp.media = V.task(self.svc.release_task(req.context.caller, job_id, task))


class TokensResource(Base):
    def on_post(self, req, resp):
        new = self.svc.create_token(req.context.caller, read_body(req, S.TOKEN_CREATE, optional=True))
        resp.status = falcon.HTTP_201
        resp.location = f"/tokens/{new.token.id}"
        resp.media = V.token(new.token, new.secret)

    def on_get(self, req, resp):
        resp.media = {"items": [V.token(t) for t in self.svc.list_tokens(req.context.caller)]}


class TokenResource(Base):
    def on_delete(self, req, resp, token_id):
        resp.media = V.token(self.svc.revoke_token(req.context.caller, token_id))


class OpenApiResource:
    public = True

    def __init__(self, document: dict):
        self.text = json.dumps(document, indent=1)

    def on_get(self, req, resp):
        resp.content_type = falcon.MEDIA_JSON
        resp.text = self.text


def _query(req, allowed: set[str]) -> dict:
    unknown = sorted(set(req.params) - allowed)
    if unknown:
        raise E.Invalid(f"unknown query parameter{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)} "
                        f"(allowed: {', '.join(sorted(allowed))})", fields=unknown)
    out = {}
    for k, v in req.params.items():
        if isinstance(v, list):
            raise E.Invalid(f"{k}: give it once", field=k)
        if BAD_TEXT.search(v):     # the query string is decoded with U+FFFD for bad UTF-8: only NUL is left
            raise E.Invalid(f"{k}: must be {TEXT_RULE}", field=k)
        out[k] = v
    return out


def _signed_param(params: dict, name: str, default: int) -> int:
    if name not in params:
        return default
    v = params[name]
    if not re.fullmatch(r"-?[0-9]{1,18}", v):
        raise E.Invalid(f"{name}: expected an integer (negative: from the end), got {v!r}", field=name)
    return int(v)


_TIME = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?)?(Z|[+-][0-9]{2}:?[0-9]{2})?$")


def _time_param(params: dict, name: str) -> str | None:
    """An ISO 8601 date or time (a time without a zone is UTC) as the database's UTC format, or None."""
    v = params.get(name)
    if v is None or v == "":
        return None
    try:
        if not _TIME.match(v):
            raise ValueError
        t = _dt.datetime.fromisoformat(v.replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        raise E.Invalid(f"{name}: expected an ISO 8601 date or time (e.g. 2026-11-28 or 2026-11-28T12:00:00Z), "
                        f"got {v!r}", field=name) from None
    return utc_text(t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc))


def _window(params: dict) -> tuple[str, str]:
    since, until = _time_param(params, "since") or "", _time_param(params, "until") or "9999"
    return since, until


def _history(params: dict) -> History | None:
    """A history listing (jobs that ended in a window, newest end first) when since or until is given; its
    before is then the cursor of a history page (without them, before is order=newest's job id)."""
    if not any(params.get(k) for k in ("since", "until")):
        return None
    since, until = _window(params)
    before = History.before
    if params.get("before"):
        at, _, jid = params["before"].rpartition(",")
        try:
            if not re.fullmatch(r"[0-9]{1,18}", jid) or _time_param({"t": at}, "t") != at:
                raise ValueError
        except (ValueError, E.Invalid):
            raise E.Invalid(f"before: expected the cursor of a next link (<finished_at>,<id>), got "
                            f"{params['before']!r}", field="before") from None
        before = (at, int(jid))
    return History(since=since, until=until, before=before)


def _include(params: dict) -> bool:
    v = params.get("include")
    if v is None:
        return False
    if v != "metrics":
        raise E.Invalid(f"include: expected metrics, got {v!r}", field="include")
    return True


def _statuses(params: dict) -> list[JobStatus] | None:
    if not params.get("status"):
        return None
    statuses = []
    for s in params["status"].split(","):
        try:
            statuses.append(JobStatus(s.strip().upper()))
        except ValueError:
            raise E.Invalid(f"status: {s!r} is not one of {', '.join(S.STATUSES)}", field="status") from None
    return statuses


def _bool_param(params: dict, name: str) -> bool:
    v = params.get(name)
    if v is None:
        return False
    if v.lower() not in ("true", "false", "1", "0"):
        raise E.Invalid(f"{name}: expected true or false, got {v!r}", field=name)
    return v.lower() in ("true", "1")


def _int_param(params: dict, name: str, default: int, lo: int, hi: int | None = None) -> int:
    if name not in params:
        return default
    v = params[name]
    # ASCII digits only: str.isdigit() also accepts '²', which int() refuses (that was a 500)
    if not re.fullmatch(r"[0-9]{1,18}", v) or int(v) < lo or (hi is not None and int(v) > hi):
        raise E.Invalid(f"{name}: expected an integer {lo}..{hi if hi is not None else ''}, got {v!r}", field=name)
    return int(v)


# -- factory ------------------------------------------------------------------------------------

# The route table: every route of the API, in the order of the OpenAPI document. A route: its Falcon template
# (ID, TASK: IdConverter's and TaskConverter's names), its resource (made with the app's Services), its OpenAPI
# operations by method (openapi.py). A route that is not part of the API (an HTML page) is
# Route(template, resource, api=False). create_app adds the document's own route, /openapi.json.
ROUTES: tuple[Route, ...] = (
    Route("/", RootResource, O.ROOT),
    Route("/status", RootResource, O.STATUS),
    Route("/cluster/mode", ModeResource, O.MODE),
    Route("/cluster/nodes", NodesResource, O.NODES),
    Route("/cluster/nodes/master", MasterNodeResource, O.MASTER_NODE),
    Route(f"/cluster/nodes/{{node_id:{ID}}}", NodeResource, O.NODE),
    Route("/queues", QueuesResource, O.QUEUES),
    Route(f"/queues/{{queue_id:{ID}}}", QueueResource, O.QUEUE),
    Route("/jobs", JobsResource, O.JOBS),
    Route(f"/jobs/{{job_id:{ID}}}", JobResource, O.JOB),
    Route(f"/jobs/{{job_id:{ID}}}/hold", JobHoldResource, O.JOB_HOLD),
    Route(f"/jobs/{{job_id:{ID}}}/release", JobReleaseResource, O.JOB_RELEASE),
    Route(f"/jobs/{{job_id:{ID}}}/events", JobEventsResource, O.JOB_EVENTS),
    Route(f"/jobs/{{job_id:{ID}}}/why", JobWhyResource, O.JOB_WHY),
    Route(f"/jobs/{{job_id:{ID}}}/tasks", TasksResource, O.TASKS),
    Route(f"/jobs/{{job_id:{ID}}}/tasks/{{task:{TASK}}}", TaskResource, O.TASK),
    Route(f"/jobs/{{job_id:{ID}}}/tasks/{{task:{TASK}}}/hold", TaskHoldResource, O.TASK_HOLD),
    Route(f"/jobs/{{job_id:{ID}}}/tasks/{{task:{TASK}}}/release", TaskReleaseResource, O.TASK_RELEASE),
    Route(f"/jobs/{{job_id:{ID}}}/tasks/{{task:{TASK}}}/why", JobWhyResource, O.TASK_WHY),
    Route(f"/jobs/{{job_id:{ID}}}/output", JobOutputResource, O.JOB_OUTPUT),
    Route(f"/jobs/{{job_id:{ID}}}/metrics", JobMetricsResource, O.JOB_METRICS),
    Route(f"/cluster/nodes/{{node_id:{ID}}}/metrics", NodeMetricsResource, O.NODE_METRICS),
    Route("/usage", UsageResource, O.USAGE),
    Route("/foreign-jobs", ForeignJobsResource, O.FOREIGN_JOBS),
    Route("/events", EventsResource, O.EVENTS),
    Route("/events/stream", EventStreamResource, O.EVENT_STREAM),
    Route("/tokens", TokensResource, O.TOKENS),
    Route(f"/tokens/{{token_id:{ID}}}", TokenResource, O.TOKEN),
)


def create_app(services: Services, extra_routes: tuple[Route, ...] | list[Route] = ()) -> falcon.App:
    """The app serving ROUTES and extra_routes (the composition root's: metrics.ROUTES), and at /openapi.json the
    document of exactly those routes."""
    table = (*ROUTES, *extra_routes)
    app = falcon.App(middleware=[BodyLimitMiddleware(services.config.server.max_body_bytes),
                                 IdentityMiddleware(services)])
    app.router_options.converters["id"] = IdConverter
    app.router_options.converters["task"] = TaskConverter
    json_handler = falcon.media.JSONHandler(dumps=_dumps)
    app.resp_options.media_handlers.update({falcon.MEDIA_JSON: json_handler})
    app.req_options.strip_url_path_trailing_slash = True
    app.req_options.auto_parse_qs_csv = False
    app.resp_options.secure_cookies_by_default = True
    for route in table:
        app.add_route(route.template, route.resource(services))
    app.add_route(O.DOCUMENT_PATH, OpenApiResource(O.build_document(table)))
    app.add_error_handler(Exception, _handle_unexpected)
    app.add_error_handler(E.MetaschedError, _handle_domain_error)
    app.set_error_serializer(_serialize_http_error)
    return app
