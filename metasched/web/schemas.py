"""JSON schemas of every request and response body: enforced on requests, published in /openapi.json,
checked against real responses by the web tests."""
from __future__ import annotations

from ..model import JobStatus, Policy

STATUSES = [s.value for s in JobStatus]
FOREIGN_STATES = ["PENDING", "RUNNING"]
QUEUE_REF = {"oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "minLength": 1, "maxLength": 255}],
             "description": "queue id, or the scheduler's name"}
ABS_PATH = {"type": "string", "minLength": 1, "maxLength": 4096, "pattern": "^/",
            "description": "absolute path on the scheduler's nodes"}
NAME = {"type": "string", "minLength": 1, "maxLength": 200}
ARGS = {"type": "array", "maxItems": 256, "items": {"type": "string", "maxLength": 4096},
        "description": "arguments passed to the script, each one verbatim"}
TIME = {"type": ["string", "null"], "description": "UTC, ISO 8601"}

# -- workflows (issue 16) ------------------------------------------------------------------------------
ARRAY = {"type": "string", "minLength": 1, "maxLength": 40, "pattern": r"^[0-9]+(-[0-9]+(:[0-9]+)?)?(%[0-9]+)?$",
         "description": "an array of tasks in one submission: FIRST[-LAST[:STEP]][%LIMIT], e.g. 1-1000:2%50 "
                        "(tasks 1, 3, ..., 999, at most 50 running at once); each task gets "
                        "$METASCHED_ARRAY_TASK_ID (and the scheduler's own variable)"}
JOB_REF = {"oneOf": [{"type": "integer", "minimum": 1},
                     {"type": "string", "minLength": 1, "maxLength": 30, "pattern": r"^[0-9]+(\.[0-9]+)?$"}],
           "description": "a job id (12; an array: all its tasks) or one task of an array (\"12.3\")"}
_REFS = {"type": "array", "maxItems": 100, "items": JOB_REF}
AFTER = {
    "type": "object", "additionalProperties": False,
    "description": "wait for other jobs, of any queue: ok (they COMPLETED), notok (they ended ERROR or "
                   "CANCELLED), any (they ended), started (they began running, or ended); a dependency that can "
                   "no longer be met cancels the job, naming it (unless workflows.cancel_impossible is off)",
    "properties": {"ok": _REFS, "notok": _REFS, "any": _REFS, "started": _REFS},
}
AFTER_OUT = {"type": ["object", "null"], "properties": {k: {"type": "array", "items": {"type": ["integer", "string"]}}
                                                        for k in ("ok", "notok", "any", "started")}}
JOB_SUBMIT = {
    "type": "object", "additionalProperties": False, "required": ["queue", "path"],
    "properties": {
        "queue": QUEUE_REF, "path": ABS_PATH, "name": NAME, "options": ARGS,
        "pwd": ABS_PATH | {"description": "working directory (default: the script's directory)"},
        "hold": {"type": "boolean", "description": "submit it held: not dispatched until released"},
        "owner": {"type": "string", "minLength": 1, "maxLength": 32,
                  "description": "admins only: submit on behalf of this user (default: the caller)"},
        "array": ARRAY, "after": AFTER,
    },
}
JOB_PATCH = {
    "type": "object", "additionalProperties": False, "minProperties": 1,
    "properties": {"queue": QUEUE_REF, "path": ABS_PATH, "name": NAME, "options": ARGS, "pwd": ABS_PATH,
                   "after": AFTER | {"description": "replaces the job's dependencies ({} removes them)"}},
}
MODE_PUT = {
    "type": "object", "additionalProperties": False, "minProperties": 1,
    "properties": {
        "policy": {"type": "string", "enum": [p.value for p in Policy]},
        "high_priority": {"oneOf": [QUEUE_REF["oneOf"][0], QUEUE_REF["oneOf"][1], {"type": "null"}]},
        "weights": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 100},
                    "description": "queue id or name -> weight 0..100 (shared, dynamic)"},
    },
}
TOKEN_CREATE = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "description": {"type": "string", "maxLength": 200},
        "expires_in_days": {"type": "number", "exclusiveMinimum": 0, "maximum": 3650},
        "user": {"type": "string", "minLength": 1, "maxLength": 32, "description": "admins only"},
    },
}

ERROR = {
    "type": "object", "required": ["title", "description", "status"],
    "properties": {"title": {"type": "string"}, "description": {"type": "string"}, "status": {"type": "integer"},
                   "field": {"type": "string", "description": "the one field (or parameter) that was wrong"},
                   "fields": {"type": "array", "items": {"type": "string"},
                              "description": "the fields that were wrong (unknown or missing)"}},
}
TASK_STATES = [s for s in STATUSES if s != "DISPATCHING"]
ARRAY_OUT = {
    "type": ["object", "null"], "required": ["spec", "count", "limit", "tasks"],
    "description": "null for a plain job; for an array its spec and its tasks per state",
    "properties": {"spec": {"type": "string"}, "count": {"type": "integer"}, "limit": {"type": ["integer", "null"]},
                   "tasks": {"type": "object", "properties": {s: {"type": "integer"} for s in TASK_STATES}}},
}
JOB = {
    "type": "object",
    "required": ["id", "name", "native_name", "queue", "owner", "status", "path", "options", "pwd", "scheduler_job_id",
                 "exit_code", "reason", "cancel_requested", "created_at", "submitted_at", "started_at",
                 "finished_at", "updated_at", "links", "array", "after"],
    "properties": {
        "id": {"type": "integer"}, "name": {"type": "string"},
        "native_name": {"type": "string", "description": "the job's name in its scheduler: ms<id>-<token>_<name>, "
                                                         "the tag by which metasched recognises it (the job's "
                                                         "output files carry it too)"},
        "queue": {"type": "integer"},
        "owner": {"type": "string"}, "status": {"type": "string", "enum": STATUSES},
        "path": {"type": "string"}, "options": {"type": "array", "items": {"type": "string"}},
        "pwd": {"type": "string"}, "scheduler_job_id": {"type": ["string", "null"]},
        "exit_code": {"type": ["integer", "null"]}, "reason": {"type": ["string", "null"]},
        "cancel_requested": {"type": "boolean"},
        "created_at": {"type": "string"}, "submitted_at": TIME, "started_at": TIME, "finished_at": TIME,
        "updated_at": {"type": "string"},
        "links": {"type": "object", "properties": {"self": {"type": "string"}, "events": {"type": "string"},
                                                   "why": {"type": "string"}, "tasks": {"type": "string"}}},
        "array": ARRAY_OUT, "after": AFTER_OUT,
    },
}
TASK = {
    "type": "object",
    "required": ["id", "job", "task", "status", "native_id", "exit_code", "reason", "cancel_requested", "started_at",
                 "finished_at", "updated_at"],
    "properties": {
        "id": {"type": "string", "description": "JOB.TASK"}, "job": {"type": "integer"}, "task": {"type": "integer"},
        "status": {"type": "string", "enum": TASK_STATES},
        "native_id": {"type": ["string", "null"], "description": "the task in its scheduler"},
        "exit_code": {"type": ["integer", "null"]}, "reason": {"type": ["string", "null"]},
        "cancel_requested": {"type": "boolean"}, "started_at": TIME, "finished_at": TIME,
        "updated_at": {"type": "string"},
    },
}
TASK_LIST = {
    "type": "object", "required": ["items", "next"],
    "properties": {"items": {"type": "array", "items": TASK}, "next": {"type": ["string", "null"]}},
}
REASON = {"type": "object", "required": ["code", "text", "detail"],
          "properties": {"code": {"type": "string"}, "text": {"type": "string"}, "detail": {"type": "string"}}}
WHY = {
    "type": "object", "required": ["job", "task", "status", "where", "summary", "reasons", "position", "ahead",
                                   "ahead_yours", "scheduler_reason", "since"],
    "properties": {
        "job": {"type": "integer"}, "task": {"type": ["integer", "null"]},
        "status": {"type": "string", "enum": STATUSES},
        "where": {"type": "string", "enum": ["metasched", "dispatching", "scheduler", "running", "ended"],
                  "description": "metasched: waiting in our queue; scheduler: in the scheduler's queue"},
        "summary": {"type": "string", "description": "one line for people"},
        "reasons": {"type": "array", "items": REASON,
                    "description": "what keeps it waiting now: the policy's own reason, dependencies, a hold, a "
                                   "throttle (code, the recorded text, and the detail of the moment)"},
        "position": {"type": ["integer", "null"], "description": "its place among the jobs waiting in its queue "
                                                                 "(1: next)"},
        "ahead": {"type": ["integer", "null"], "description": "jobs waiting ahead of it in its queue"},
        "ahead_yours": {"type": "array", "items": {"type": "integer"}, "description": "those that are yours"},
        "scheduler_reason": {"type": ["string", "null"],
                             "description": "the scheduler's own pending reason (squeue %r, qstat -j scheduling "
                                            "info), as the poller last read it"},
        "since": TIME | {"description": "when its current reason was first recorded"},
        "tasks": {"type": ["object", "null"]},
    },
}
DRY_RUN = {
    "type": "object", "required": ["dry_run", "mode", "dispatch", "waiting", "shares", "nodes", "current"],
    "description": "what the proposed mode would do now; nothing was changed",
    "properties": {
        "dry_run": {"type": "boolean", "enum": [True]},
        "mode": {"$ref": "#/components/schemas/Mode"},
        "dispatch": {"type": "array", "description": "the jobs it would dispatch at the next cycle, in order",
                     "items": {"type": "object", "required": ["id", "queue", "owner", "name"],
                               "properties": {"id": {"type": "integer"}, "queue": {"type": "integer"},
                                              "owner": {"type": "string"}, "name": {"type": "string"}}}},
        "waiting": {"type": "object", "additionalProperties": {"type": "integer"},
                    "description": "why the other waiting jobs would wait: reason -> number of jobs"},
        "shares": {"type": "array", "items": {"type": "object", "required": ["queue_id", "name", "share"],
                                              "properties": {"queue_id": {"type": "integer"},
                                                             "name": {"type": "string"},
                                                             "share": {"type": "number"}}}},
        "nodes": {"type": "array", "description": "the CPU shares per node under the proposed mode",
                  "items": {"type": "object", "required": ["node_id", "address", "shares"],
                            "properties": {"node_id": {"type": "integer"}, "address": {"type": "string"},
                                           "shares": {"type": "object",
                                                      "additionalProperties": {"type": "number"}}}}},
        "current": {"type": "object", "required": ["dispatch", "shares"],
                    "description": "the same under the mode in force, for comparison",
                    "properties": {"dispatch": {"type": "array", "items": {"type": "integer"}},
                                   "shares": {"type": "object", "additionalProperties": {"type": "number"}}}},
    },
}
JOB_LIST = {
    "type": "object", "required": ["items", "next"],
    "properties": {"items": {"type": "array", "items": JOB}, "next": {"type": ["string", "null"]}},
}
EVENT = {
    "type": "object", "required": ["id", "at", "old_status", "new_status", "actor", "reason", "task"],
    "properties": {"id": {"type": "integer"}, "at": {"type": "string"},
                   "old_status": {"type": ["string", "null"]}, "new_status": {"type": "string"},
                   "actor": {"type": "string"}, "reason": {"type": ["string", "null"]},
                   "task": {"type": ["integer", "null"], "description": "an array task's event (null: the job's)"}},
}
EVENT_LIST = {"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": EVENT}}}
QUEUE = {
    "type": "object",
    "required": ["id", "name", "type", "master_node_id", "weight", "reachable", "jobs", "foreign_jobs"],
    "properties": {
        "id": {"type": "integer"}, "name": {"type": "string"},
        "type": {"type": "string", "enum": ["sge", "slurm", "yarn", "local"]},
        "master_node_id": {"type": "integer"}, "weight": {"type": "integer"},
        "reachable": {"type": ["boolean", "null"]}, "last_error": {"type": ["string", "null"]},
        "jobs": {"type": "object", "properties": {s: {"type": "integer"} for s in STATUSES},
                 "required": STATUSES},
        "foreign_jobs": {"type": "object", "properties": {s: {"type": "integer"} for s in FOREIGN_STATES},
                         "required": FOREIGN_STATES,
                         "description": "jobs submitted to the scheduler directly, not through metasched"},
    },
}
QUEUE_LIST = {"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": QUEUE}}}
FOREIGN_JOB = {
    "type": "object",
    "description": "a job submitted directly to a scheduler (e.g. plain qsub or sbatch): metasched only "
                   "observes it; it is listed while its scheduler lists it pending or running",
    "required": ["id", "queue", "native_id", "owner", "name", "state", "native_queue", "start_time",
                 "first_seen", "last_seen"],
    "properties": {
        "id": {"type": "integer", "description": "row id (cursor for after=); not a metasched job id"},
        "queue": {"type": "integer", "description": "the scheduler's queue id"},
        "native_id": {"type": "string"}, "owner": {"type": "string"}, "name": {"type": "string"},
        "state": {"type": "string", "enum": FOREIGN_STATES},
        "native_queue": {"type": "string", "description": "the scheduler's own queue or partition"},
        "start_time": TIME, "first_seen": {"type": "string"}, "last_seen": {"type": "string"},
    },
}
FOREIGN_JOB_LIST = {
    "type": "object", "required": ["items", "next"],
    "properties": {"items": {"type": "array", "items": FOREIGN_JOB}, "next": {"type": ["string", "null"]}},
}
NODE = {
    "type": "object", "required": ["id", "ip", "port", "master", "reachable", "last_seen", "last_error", "load"],
    "properties": {
        "id": {"type": "integer"}, "ip": {"type": "string"}, "port": {"type": "integer"},
        "master": {"type": "boolean"}, "reachable": {"type": ["boolean", "null"]}, "last_seen": TIME,
        "last_error": {"type": ["string", "null"]},
        "load": {"type": ["array", "null"], "items": {"type": "number"}},
        "ncpus": {"type": ["integer", "null"]},
        "enforcement": {
            "type": ["object", "null"],
            "description": "how the policy's CPU shares are applied on this node (null until its first cycle)",
            "properties": {
                "mechanism": {"type": ["string", "null"], "enum": ["cgroup_v2", "cgroup_v1", "nice", "none", None]},
                "note": {"type": ["string", "null"]},
                "window_seconds": {"type": "number", "description": "what measured_share was measured over"},
                "errors": {"type": "array", "items": {"type": "string"}},
                "schedulers": {"type": "array", "items": {
                    "type": "object", "required": ["queue_id", "name", "target_share", "measured_share"],
                    "properties": {
                        "queue_id": {"type": "integer"}, "name": {"type": "string"}, "group": {"type": "string"},
                        "mechanism": {"type": ["string", "null"]},
                        "target_share": {"type": "number", "description": "percent of the node's CPU"},
                        "measured_share": {"type": ["number", "null"],
                                           "description": "percent its group got over the window"},
                        "weight": {"type": ["integer", "null"],
                                   "description": "cpu.shares, cpu.weight or the nice value written"},
                        "pids": {"type": ["integer", "null"]},
                        "usage_source": {"type": ["string", "null"]}}}},
            },
        },
    },
}
NODE_LIST = {"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": NODE}}}
MODE = {
    "type": "object", "required": ["policy", "high_priority", "schedulers", "updated_at", "updated_by"],
    "properties": {
        "policy": {"type": "string", "enum": [p.value for p in Policy]},
        "high_priority": {"type": ["object", "null"]},
        "schedulers": {"type": "array", "items": {
            "type": "object", "required": ["queue_id", "name", "weight"],
            "properties": {"queue_id": {"type": "integer"}, "name": {"type": "string"},
                           "type": {"type": "string"}, "weight": {"type": "integer"}}}},
        "updated_at": {"type": "string"}, "updated_by": {"type": "string"},
    },
}
STATUS = {
    "type": "object", "required": ["service", "version", "user", "admin"],
    "properties": {"service": {"type": "string"}, "version": {"type": "string"},
                   "user": {"type": ["string", "null"]}, "admin": {"type": "boolean"},
                   "authenticated_by": {"type": "string"}, "poller": {"type": "object"}},
}
TOKEN = {
    "type": "object", "required": ["id", "user", "description", "created_by", "created_at", "expires_at",
                                   "revoked_at"],
    "properties": {"id": {"type": "integer"}, "user": {"type": "string"}, "description": {"type": "string"},
                   "created_by": {"type": "string"}, "created_at": {"type": "string"},
                   "expires_at": {"type": "string"}, "revoked_at": TIME, "last_used_at": TIME},
}
TOKEN_CREATED = {**TOKEN, "required": TOKEN["required"] + ["token"],
                 "properties": {**TOKEN["properties"], "token": {
                     "type": "string", "description": "the secret: shown once, stored only as a hash"}}}
TOKEN_LIST = {"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": TOKEN}}}
