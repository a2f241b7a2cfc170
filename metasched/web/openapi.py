"""The OpenAPI 3.1 document of every route. Its request schemas are the ones the API enforces (schemas.py);
a test fails when a route of the app is missing here, and the web tests validate real responses against it."""
from __future__ import annotations

import json

from .. import __version__
from . import schemas as S

_ERR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


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
TASK_ID = JOB_ID + [{"name": "task", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}]
WRITE_ERRORS = (400, 401, 404, 409, 413, 415)

PATHS = {
    "/": {"get": _op("Service, version, who you are", {"200": _resp("Status")}, errors=())},
    "/status": {"get": _op("Service, version, who you are, the poller's last cycle", {"200": _resp("Status")},
                           errors=(401,))},
    "/cluster/mode": {
        "get": _op("The cluster policy and weights", {"200": _resp("Mode")}),
        "put": _op("Change the policy (admins); recorded as an event, survives restarts. With dry_run=true: what "
                   "the proposed mode would dispatch now and the CPU shares per node under it, changing nothing",
                   {"200": {"description": "the mode in force (a dry run: DryRun)", "content": {"application/json": {
                       "schema": {"oneOf": [{"$ref": "#/components/schemas/Mode"},
                                            {"$ref": "#/components/schemas/DryRun"}]}}}}},
                   errors=(400, 401, 403, 413, 415), body="ModePut",
                   params=[_query("dry_run", {"type": "boolean"}, "true: answer what it would do, change nothing")]),
    },
    "/cluster/nodes": {"get": _op("Nodes and their liveness", {"200": _resp("NodeList")})},
    "/cluster/nodes/master": {"get": _op("The master (frontend) node", {"200": _resp("Node")})},
    "/cluster/nodes/{node_id}": {"get": _op("One node", {"200": _resp("Node")}, errors=(401, 404),
                                            params=[_path_param("node_id")])},
    "/queues": {"get": _op("One queue per scheduler, with job counts per state (ours, and foreign_jobs: those "
                           "submitted to the scheduler directly)", {"200": _resp("QueueList")})},
    "/queues/{queue_id}": {"get": _op("One queue", {"200": _resp("Queue")}, errors=(401, 404),
                                      params=[_path_param("queue_id")])},
    "/jobs": {
        "post": _op("Submit a job", {"201": _resp("Job", "created; Location names it")},
                    errors=(400, 401, 403, 413, 415), body="JobSubmit"),
        "get": _op("List jobs (yours; admins: everyone's), oldest first, a page at a time",
                   {"200": _resp("JobList")}, errors=(400, 401, 403), params=[
                       _query("status", {"type": "string"}, "comma-separated states"),
                       _query("queue", {"type": "string"}, "queue id or name"),
                       _query("owner", {"type": "string"}, "admins only"),
                       _query("after", {"type": "integer", "minimum": 0}, "cursor: list ids greater than this"),
                       _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size")]),
    },
    "/jobs/{job_id}": {
        "get": _op("One job", {"200": _resp("Job")}, errors=(401, 404), params=JOB_ID),
        "patch": _op("Edit a job before it is dispatched (its dependencies too: after)", {"200": _resp("Job")},
                     errors=WRITE_ERRORS,
                     body="JobPatch", params=JOB_ID),
        "delete": _op("Cancel: at once before dispatch (200), else a request the poller carries out (202)",
                      {"200": _resp("Job", "cancelled"), "202": _resp("Job", "cancel requested")},
                      errors=(401, 404, 409), params=JOB_ID),
    },
    "/jobs/{job_id}/hold": {"post": _op("Hold a job not yet dispatched", {"200": _resp("Job")},
                                        errors=(401, 404, 409), params=JOB_ID)},
    "/jobs/{job_id}/release": {"post": _op("Release a held job", {"200": _resp("Job")},
                                           errors=(401, 404, 409), params=JOB_ID)},
    "/jobs/{job_id}/events": {"get": _op("Every state change of a job (of one of its tasks with task=N)",
                                         {"200": _resp("EventList")}, errors=(400, 401, 404), params=JOB_ID + [
                                             _query("task", {"type": "integer", "minimum": 0},
                                                    "an array task's events instead of the job's")])},
    "/jobs/{job_id}/why": {"get": _op("Why the job waits: the policy's own reason now, its dependencies, a hold, "
                                      "its place in its queue; in the scheduler's queue, the scheduler's reason",
                                      {"200": _resp("Why")}, errors=(401, 404), params=JOB_ID)},
    "/jobs/{job_id}/tasks": {"get": _op("An array's tasks, by index, a page at a time", {"200": _resp("TaskList")},
                                        errors=(400, 401, 404), params=JOB_ID + [
                                            _query("status", {"type": "string"}, "comma-separated states"),
                                            _query("after", {"type": "integer", "minimum": 0},
                                                   "cursor: tasks with a greater index"),
                                            _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000},
                                                   "page size")])},
    "/jobs/{job_id}/tasks/{task}": {
        "get": _op("One task of an array", {"200": _resp("Task")}, errors=(401, 404), params=TASK_ID),
        "delete": _op("Cancel one task: at once before it is in its scheduler (200), else a request the poller "
                      "carries out (202)", {"200": _resp("Task", "cancelled"), "202": _resp("Task", "cancel requested")},
                      errors=(401, 404, 409), params=TASK_ID),
    },
    "/jobs/{job_id}/tasks/{task}/hold": {"post": _op("Hold a task not started yet (in our queue or the "
                                                     "scheduler's)", {"200": _resp("Task")},
                                                     errors=(401, 404, 409), params=TASK_ID)},
    "/jobs/{job_id}/tasks/{task}/release": {"post": _op("Release a held task", {"200": _resp("Task")},
                                                        errors=(401, 404, 409), params=TASK_ID)},
    "/jobs/{job_id}/tasks/{task}/why": {"get": _op("Why a task waits", {"200": _resp("Why")}, errors=(401, 404),
                                                   params=TASK_ID)},
    "/foreign-jobs": {
        "get": _op("Jobs submitted directly to the schedulers (yours; admins: everyone's), oldest first, a page "
                   "at a time; metasched only observes them", {"200": _resp("ForeignJobList")},
                   errors=(400, 401, 403), params=[
                       _query("queue", {"type": "string"}, "queue id or name"),
                       _query("owner", {"type": "string"}, "admins only"),
                       _query("after", {"type": "integer", "minimum": 0}, "cursor: list ids greater than this"),
                       _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size")]),
    },
    "/tokens": {
        "post": _op("Create a bearer token (for yourself; admins for anyone)",
                    {"201": _resp("TokenCreated")}, errors=(400, 401, 403, 413, 415), body="TokenCreate",
                    body_required=False),
        "get": _op("Your tokens (admins: all)", {"200": _resp("TokenList")}),
    },
    "/tokens/{token_id}": {"delete": _op("Revoke a token", {"200": _resp("Token")}, errors=(401, 404),
                                         params=[_path_param("token_id")])},
    "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
}

COMPONENTS = {
    "Error": S.ERROR, "Status": S.STATUS, "Mode": S.MODE, "ModePut": S.MODE_PUT, "Node": S.NODE,
    "NodeList": S.NODE_LIST, "Queue": S.QUEUE, "QueueList": S.QUEUE_LIST, "Job": S.JOB, "JobList": S.JOB_LIST,
    "JobSubmit": S.JOB_SUBMIT, "JobPatch": S.JOB_PATCH, "EventList": S.EVENT_LIST, "Token": S.TOKEN,
    "TokenCreated": S.TOKEN_CREATED, "TokenCreate": S.TOKEN_CREATE, "TokenList": S.TOKEN_LIST,
    "ForeignJobList": S.FOREIGN_JOB_LIST, "Task": S.TASK, "TaskList": S.TASK_LIST, "Why": S.WHY, "DryRun": S.DRY_RUN,
}


def register(path: str, operations: dict, components: dict | None = None) -> None:
    """Other modules (e.g. metrics) add their routes to the document."""
    PATHS[path] = operations
    COMPONENTS.update(components or {})


def _with_common_errors(paths: dict) -> dict:
    """Statuses any operation can answer: 401 (an invalid, expired or revoked token is refused on every
    route, the public ones too), 503 (the database is busy or unavailable), and 413 for every method
    that takes a body (the limit is checked before routing)."""
    out = {}
    for path, ops in paths.items():
        out[path] = {}
        for method, op in ops.items():
            common = (401, 503, 413) if method in ("post", "put", "patch") else (401, 503)
            responses = dict(op["responses"])
            for code in common:
                responses.setdefault(str(code), _ERR)
            out[path][method] = dict(op, responses=responses)
    return out


def build_document() -> dict:
    """A fresh copy each time (a JSON round trip: faster than deepcopy, and proves it serializes): callers
    may change theirs without changing what the app serves."""
    return json.loads(json.dumps({
        "openapi": "3.1.0",
        "info": {"title": "metasched", "version": __version__,
                 "description": "One queue in front of the schedulers of a hybrid cluster. Identity: the unix "
                                "socket's peer credentials, or Authorization: Bearer <token>."},
        "paths": _with_common_errors(PATHS),
        "components": {
            "schemas": COMPONENTS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }))
