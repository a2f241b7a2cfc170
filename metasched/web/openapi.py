"""The OpenAPI 3.1 document of an app's routes: the operations of each route (the route table, web.app.ROUTES,
pairs them with its template and resource) and what every operation shares. Its request schemas are the ones
the API enforces (schemas.py); the web tests validate real responses against it."""
from __future__ import annotations

import json

from .. import __version__
from . import schemas as S

_ERR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_BAD_TOKEN = dict(_ERR, description="only when the Authorization header carries a token that is invalid, expired "
                                    "or revoked; without that header this route answers anyone")


def _resp(schema_name: str | None, description: str = "ok") -> dict:
    if schema_name is None:
        return {"description": description}
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}}}


def _op(summary: str, ok: dict, errors=(401,), body: str | None = None, params=None, body_required=True):
    op = {"summary": summary, "responses": {**ok, **{str(e): _ERR for e in errors}}}
    if body:
        op["requestBody"] = {"required": body_required, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{body}"}}}}
    if params:
        op["parameters"] = params
    return op


def _path_param(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}


def _query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


JOB_ID = [_path_param("job_id")]
TIME_PARAM = {"type": "string", "description": "ISO 8601 date or time; without a zone: UTC"}
INCLUDE = _query("include", {"type": "string", "enum": ["metrics"]},
                 "metrics: each job with its latest live measurement (metrics)")
WINDOW = [_query("since", TIME_PARAM, "samples taken at or after this"),
          _query("until", TIME_PARAM, "samples taken before this"),
          _query("after", {"type": "integer", "minimum": 0}, "cursor, from a next link"),
          _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size")]
TASK_ID = JOB_ID + [{"name": "task", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}]
WRITE_ERRORS = (400, 401, 404, 409, 413, 415)

# The OpenAPI operations of each route, by method; web.app.ROUTES pairs each with its URI template and
# resource, and build_document makes the document's paths from that table.
ROOT = {"get": _op("Service, version, who you are", {"200": _resp("Status")}, errors=())}

STATUS = {"get": _op("Service, version, who you are, the poller's last cycle", {"200": _resp("Status")},
                     errors=())}

MODE = {
    "get": _op("The cluster policy and weights", {"200": _resp("Mode")}),
    "put": _op("Change the policy (admins); recorded as an event, survives restarts. With dry_run=true: what "
               "the proposed mode would dispatch now and the CPU shares per node under it, changing nothing",
               {"200": {"description": "the mode in force (a dry run: DryRun)", "content": {"application/json": {
                   "schema": {"oneOf": [{"$ref": "#/components/schemas/Mode"},
                                        {"$ref": "#/components/schemas/DryRun"}]}}}}},
               errors=(400, 401, 403, 413, 415), body="ModePut",
               params=[_query("dry_run", {"type": "boolean"}, "true: answer what it would do, change nothing")]),
}

NODES = {"get": _op("Nodes and their liveness", {"200": _resp("NodeList")})}

MASTER_NODE = {"get": _op("The master (frontend) node", {"200": _resp("Node")})}

NODE = {"get": _op("One node", {"200": _resp("Node")}, errors=(401, 404),
                   params=[_path_param("node_id")])}

QUEUES = {"get": _op("One queue per scheduler, with job counts per state (ours, and foreign_jobs: those "
                     "submitted to the scheduler directly)", {"200": _resp("QueueList")})}

QUEUE = {"get": _op("One queue", {"200": _resp("Queue")}, errors=(401, 404),
                    params=[_path_param("queue_id")])}

JOBS = {
    "post": _op("Submit a job", {"201": _resp("Job", "created; Location names it")},
                errors=(400, 401, 403, 413, 415), body="JobSubmit"),
    "get": _op("List jobs (yours; admins: everyone's), oldest first (or newest first), a page at a time. With "
               "since or until: the history, jobs that ended in that window, newest end first",
               {"200": _resp("JobList")}, errors=(400, 401, 403), params=[
                   _query("status", {"type": "string"}, "comma-separated states"),
                   _query("queue", {"type": "string"}, "queue id or name (empty: any)"),
                   _query("owner", {"type": "string"}, "admins only (empty: anyone's)"),
                   _query("order", {"type": "string", "enum": ["oldest", "newest"]}, "oldest first (default) "
                          "or newest first"),
                   _query("after", {"type": "integer", "minimum": 0}, "cursor: list ids greater than this"),
                   _query("before", {"oneOf": [
                       {"type": "integer", "minimum": 1},
                       {"type": "string", "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z,[0-9]+$"}]},
                       "cursor of order=newest: list ids smaller than this; with since or until, the history's "
                       "cursor (<finished_at>,<id>), from a next link"),
                   _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size"),
                   _query("since", TIME_PARAM, "history: jobs that ended (finished_at) at or after this"),
                   _query("until", TIME_PARAM, "history: jobs that ended before this"),
                   INCLUDE]),
}

JOB = {
    "get": _op("One job, with its variables and where its output goes (include=metrics: and its latest live "
               "measurement)", {"200": _resp("JobDetail")}, errors=(400, 401, 404), params=JOB_ID + [INCLUDE]),
    "patch": _op("Edit a job before it is dispatched (its dependencies too: after)", {"200": _resp("Job")},
                 errors=WRITE_ERRORS,
                 body="JobPatch", params=JOB_ID),
    "delete": _op("Cancel: at once before dispatch (200), else a request the poller carries out (202)",
                  {"200": _resp("Job", "cancelled"), "202": _resp("Job", "cancel requested")},
                  errors=(401, 404, 409), params=JOB_ID),
}

JOB_HOLD = {"post": _op("Hold a job not yet dispatched", {"200": _resp("Job")},
                        errors=(401, 404, 409), params=JOB_ID)}

JOB_RELEASE = {"post": _op("Release a held job", {"200": _resp("Job")},
                           errors=(401, 404, 409), params=JOB_ID)}

JOB_EVENTS = {"get": _op("Every state change of a job (of one of its tasks with task=N)",
                         {"200": _resp("EventList")}, errors=(400, 401, 404), params=JOB_ID + [
                             _query("task", {"type": "integer", "minimum": 0},
                                    "an array task's events instead of the job's")])}

JOB_WHY = {"get": _op("Why the job waits: the policy's own reason now, its dependencies, a hold, "
                      "its place in its queue; in the scheduler's queue, the scheduler's reason",
                      {"200": _resp("Why")}, errors=(401, 404), params=JOB_ID)}

TASKS = {"get": _op("An array's tasks, by index, a page at a time", {"200": _resp("TaskList")},
                    errors=(400, 401, 404), params=JOB_ID + [
                        _query("status", {"type": "string"}, "comma-separated states"),
                        _query("after", {"type": "integer", "minimum": 0},
                               "cursor: tasks with a greater index"),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000},
                               "page size")])}

TASK = {
    "get": _op("One task of an array", {"200": _resp("Task")}, errors=(401, 404), params=TASK_ID),
    "delete": _op("Cancel one task: at once before it is in its scheduler (200), else a request the poller "
                  "carries out (202)", {"200": _resp("Task", "cancelled"), "202": _resp("Task", "cancel requested")},
                  errors=(401, 404, 409), params=TASK_ID),
}

TASK_HOLD = {"post": _op("Hold a task not started yet (in our queue or the "
                         "scheduler's)", {"200": _resp("Task")},
                         errors=(401, 404, 409), params=TASK_ID)}

TASK_RELEASE = {"post": _op("Release a held task", {"200": _resp("Task")},
                            errors=(401, 404, 409), params=TASK_ID)}

TASK_WHY = {"get": _op("Why a task waits", {"200": _resp("Why")}, errors=(401, 404),
                       params=TASK_ID)}

JOB_OUTPUT = {"get": _op(
    "A job's stdout or stderr (an array's: one task's, task=N): its bytes, read as the job's owner on the "
    "scheduler's master node, a bounded piece at a time; 404 while the file does not exist, 503 when the node "
    "does not answer within the server's output_timeout",
    {"200": {"description": "the bytes; X-Output-Size: the file's size when read, X-Output-Offset: where they "
                            "start, X-Output-Path: the file (percent-encoded)",
             "headers": {h: {"schema": {"type": "integer" if h != "X-Output-Path" else "string"}}
                         for h in ("X-Output-Size", "X-Output-Offset", "X-Output-Path")},
             "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
    errors=(400, 401, 403, 404, 503), params=JOB_ID + [
        _query("stream", {"type": "string", "enum": ["stdout", "stderr"]}, "which output (default stdout)"),
        _query("offset", {"type": "integer"}, "where to start, in bytes (default 0; negative: from the end)"),
        _query("length", {"type": "integer", "minimum": 1},
               "the most bytes to return (default and at most the server's output_max_bytes)"),
        _query("task", {"type": "integer", "minimum": 0}, "an array's task (required for an array)")])}

JOB_METRICS = {"get": _op(
    "A job's CPU time and memory over time, as the node agents measured it (downsampled samples, oldest "
    "first) and the latest measurement", {"200": _resp("JobMetrics")}, errors=(400, 401, 404),
    params=JOB_ID + WINDOW)}

NODE_METRICS = {"get": _op(
    "A node's cpu %, memory %, disk % and load over time (samples, oldest first) and its latest figures",
    {"200": _resp("NodeMetrics")}, errors=(400, 401, 404), params=[_path_param("node_id")] + WINDOW)}

USAGE = {"get": _op(
    "What the jobs that ended in [since, until) used, per user or per queue (yours; admins: everyone's): "
    "jobs, CPU-hours, wall-hours, wait p50/p95, failure rate; and per node and scheduler the CPU share it "
    "had next to the share the policy targeted", {"200": _resp("Usage")}, errors=(400, 401, 403), params=[
        _query("since", TIME_PARAM, "default: a day before until"),
        _query("until", TIME_PARAM, "default: now"),
        _query("group_by", {"type": "string", "enum": ["user", "queue"]}, "default user"),
        _query("owner", {"type": "string"}, "admins: one user's jobs only")])}

FOREIGN_JOBS = {
    "get": _op("Jobs submitted directly to the schedulers (yours; admins: everyone's), oldest first, a page "
               "at a time; metasched only observes them", {"200": _resp("ForeignJobList")},
               errors=(400, 401, 403), params=[
                   _query("queue", {"type": "string"}, "queue id or name (empty: any)"),
                   _query("owner", {"type": "string"}, "admins only (empty: anyone's)"),
                   _query("after", {"type": "integer", "minimum": 0}, "cursor: list ids greater than this"),
                   _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size")]),
}

EVENTS = {"get": _op(
    "The event log after a cursor, oldest first, a page at a time: your jobs' events (admins: everyone's) and "
    "the cluster's (mode changes, nodes down and back)", {"200": _resp("EventPage")}, errors=(400, 401), params=[
        _query("after", {"type": "integer", "minimum": 0}, "cursor: events with ids greater than this"),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size")])}

EVENT_STREAM = {"get": _op(
    "The same events as server-sent events (id: the event id, event: job or cluster, data: the event as JSON), "
    "kept open; a comment every events.stream_heartbeat seconds when idle. Resumes after the Last-Event-ID "
    "header (or ?after=); without either it starts with the next event",
    {"200": {"description": "text/event-stream",
             "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
    errors=(400, 401), params=[
        _query("after", {"type": "integer", "minimum": 0}, "start after this event id (Last-Event-ID wins)"),
        {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"},
         "description": "the last event id received: the stream continues after it"}])}

TOKENS = {
    "post": _op("Create a bearer token (for yourself; admins for anyone)",
                {"201": _resp("TokenCreated")}, errors=(400, 401, 403, 413, 415), body="TokenCreate",
                body_required=False),
    "get": _op("Your tokens (admins: all)", {"200": _resp("TokenList")}),
}

TOKEN = {"delete": _op("Revoke a token", {"200": _resp("Token")}, errors=(401, 404),
                       params=[_path_param("token_id")])}

# The document's own route: create_app serves it beside the table's routes, and every document names it.
DOCUMENT_PATH = "/openapi.json"
DOCUMENT = {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}}

COMPONENTS = {
    "Error": S.ERROR, "Status": S.STATUS, "Mode": S.MODE, "ModePut": S.MODE_PUT, "Node": S.NODE,
    "NodeList": S.NODE_LIST, "Queue": S.QUEUE, "QueueList": S.QUEUE_LIST, "Job": S.JOB, "JobList": S.JOB_LIST,
    "JobDetail": S.JOB_DETAIL, "JobSubmit": S.JOB_SUBMIT, "JobPatch": S.JOB_PATCH, "EventList": S.EVENT_LIST, "Token": S.TOKEN,
    "TokenCreated": S.TOKEN_CREATED, "TokenCreate": S.TOKEN_CREATE, "TokenList": S.TOKEN_LIST,
    "ForeignJobList": S.FOREIGN_JOB_LIST, "JobMetrics": S.JOB_METRICS, "NodeMetrics": S.NODE_METRICS,
    "Usage": S.USAGE, "EventPage": S.FEED_PAGE, "Task": S.TASK, "TaskList": S.TASK_LIST, "Why": S.WHY,
    "DryRun": S.DRY_RUN,
}


_CSRF = dict(_ERR, description="forbidden; also a request authenticated by the dashboard's session cookie without "
                                "its X-CSRF-Token header, or one another site made with this browser's login")


def _before(description: str) -> dict:
    return dict(_ERR, description=f"answered by the server before the API sees the request: {description}")


# What the server (metasched.web.worker) answers itself, for any path: the same JSON error body.
_SERVER_ERRORS = {
    "400": _before("a malformed request line or header field, or a request that ended early"),
    "408": _before("the request was not complete within server.request_timeout seconds of its first byte"),
    "414": _before("the request line is longer than 8190 bytes"),
    "429": _before("the user (unix socket) or address (TCP) already holds server.max_connections_per_peer "
                   "connections to this worker"),
    "431": _before("more than 100 header fields, or one longer than 8190 bytes"),
}
_BODY_ERRORS = {
    "411": _before("the body is not sent with a Content-Length (chunked transfer coding is refused)"),
    "413": _before("the body is larger than server.max_body_bytes (refused before it is read)"),
    "417": _before("an Expect header other than 100-continue"),
}


def operation_id(method: str, path: str) -> str:
    """Every operation's id, from its method and path: get_jobs_job_id, post_jobs_job_id_hold."""
    words = [w.strip("{}").replace("-", "_") for w in path.split("/") if w]
    return "_".join([method] + words) if words else f"{method}_root"


# Where a created job's id goes next (OpenAPI links: clients and schemathesis follow them).
_JOB_LINKS = {f"{verb}_job{suffix}": {"operationId": operation_id(method, path), "parameters": {"job_id": "$response.body#/id"}}
              for verb, suffix, method, path in [
                  ("get", "", "get", "/jobs/{job_id}"), ("edit", "", "patch", "/jobs/{job_id}"),
                  ("cancel", "", "delete", "/jobs/{job_id}"), ("hold", "", "post", "/jobs/{job_id}/hold"),
                  ("release", "", "post", "/jobs/{job_id}/release"), ("get", "_events", "get", "/jobs/{job_id}/events")]}


def _with_common_errors(paths: dict) -> dict:
    """Every operation with its operationId, and the statuses any operation can answer: 401 (an invalid, expired or revoked token is refused on every
    route, the public ones too: there it is the only 401), 503 (the database is busy or unavailable),
    413 for every method that takes a body (the limit is checked before routing), and what the server
    answers before the API (_SERVER_ERRORS; _BODY_ERRORS for methods with a body)."""
    out = {}
    for path, ops in paths.items():
        out[path] = {}
        for method, op in ops.items():
            body = method in ("post", "put", "patch")
            common = (401, 503, 413) if body else (401, 503)
            responses = dict(op["responses"])
            for code in common:
                responses.setdefault(str(code), _BAD_TOKEN if code == 401 else _ERR)
            if method != "get":       # a dashboard session's request without its CSRF header (web/session.py)
                responses.setdefault("403", _CSRF)
            for code, resp in {**_SERVER_ERRORS, **(_BODY_ERRORS if body else {})}.items():
                responses.setdefault(code, resp)
            if (method, path) == ("post", "/jobs"):
                responses["201"] = dict(responses["201"], links=_JOB_LINKS)
            out[path][method] = dict(op, operationId=operation_id(method, path), responses=responses)
    return out


def _paths_of(routes) -> dict:
    """The document's paths: each API route's operations (web.routes.Route) under its OpenAPI path, in the
    table's order, and the document's own. A route with api=False is left out; two routes with one path are an
    error (Falcon's ``{job_id:id}`` and ``{job_id:int}`` would be one path), the document's own path included."""
    paths, seen = {}, {DOCUMENT_PATH}
    for route in routes:
        if route.path in seen:
            raise ValueError(f"route {route.template}: {route.path} is in the route table twice")
        seen.add(route.path)
        if route.api:
            paths[route.path] = route.operations
    paths[DOCUMENT_PATH] = DOCUMENT
    return paths


def build_document(routes) -> dict:
    """The document of an app serving these routes (web.routes.Route entries: web.app.ROUTES and what the
    composition root adds). A fresh copy each time (a JSON round trip: faster than deepcopy, and proves it
    serializes): callers may change theirs without changing what the app serves."""
    return json.loads(json.dumps({
        "openapi": "3.1.0",
        "info": {"title": "metasched", "version": __version__,
                 "description": "One queue in front of the schedulers of a hybrid cluster. Identity: the unix "
                                "socket's peer credentials, or Authorization: Bearer <token>."},
        "paths": _with_common_errors(_paths_of(routes)),
        "components": {
            "schemas": COMPONENTS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }))
