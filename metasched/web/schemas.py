"""JSON schemas of every request and response body: enforced on requests, published in /openapi.json,
checked against real responses by the web tests.

Every text field of a request says what text it takes (``pattern``, and ``x-pattern-error``: the words of
the 400 when it does not match); none takes NUL, and no text anywhere in a body may hold a lone
surrogate (validation.check_text: a pattern cannot say that)."""
from __future__ import annotations

from ..backends import TYPES
from ..model import JobStatus, Policy
from ..services import MAX_NAME
from .validation import TEXT_RULE

STATUSES = [s.value for s in JobStatus]
FOREIGN_STATES = ["PENDING", "RUNNING"]


def text(max_length: int, min_length: int = 0, pattern: str = r"^[^\x00]*$",
         error: str = "must not contain NUL characters", description: str = "") -> dict:
    """A request's text field: at most max_length characters of TEXT_RULE matching pattern."""
    out = {"type": "string", "maxLength": max_length, "pattern": pattern, "x-pattern-error": error,
           "description": (description + ": " if description else "") + TEXT_RULE}
    if min_length:
        out["minLength"] = min_length
    return out


# Paths: '/'-separated components, each empty, '.' or a name; never '..'. The API collapses '.' and
# repeated '/'. It does not resolve '..' by itself: '/a/link/../x' is not '/a/x' when link is a symlink,
# and '/x/..' would be '/', which names no script. So the path the schema allows is the path the job gets.
_NAME_COMPONENT = r"(?:[^/.\x00\n][^/\x00\n]*|\.[^/.\x00\n][^/\x00\n]*|\.\.[^/\x00\n]+)"
PATH_RULE = "an absolute path without '..' components, NUL or newline characters"


def user_name(description: str) -> dict:
    return text(32, 1, r"^[a-z_][a-z0-9_-]{0,31}\$?$", "is not a valid user name", description)


QUEUE_REF = {"oneOf": [{"type": "integer", "minimum": 1}, text(255, 1)],
             "description": "queue id, or the scheduler's name"}
SCRIPT_PATH = text(4096, 1, rf"^(?:/\.?)*/{_NAME_COMPONENT}(?:/(?:\.?|{_NAME_COMPONENT}))*$", f"must be the script's (or jar's) path: {PATH_RULE}, not '/'",
                   "absolute path of the job's script or jar on the scheduler's nodes")
DIRECTORY = text(4096, 1, rf"^(?:/(?:\.?|{_NAME_COMPONENT}))+$", f"must be {PATH_RULE}",
                 "working directory on the scheduler's nodes (default: the script's directory)")
NAME = text(MAX_NAME, 1, r"^[^\x00-\x1f\x7f]*$", "must not contain control characters (newline, tab, ...)",
            f"job name (default: the script's file name, cut to {MAX_NAME} characters)")
ARGS = {"type": "array", "maxItems": 256, "items": text(4096),
        "description": "arguments passed to the script, each one verbatim"}
TIME = {"type": ["string", "null"], "description": "UTC, ISO 8601"}

# -- what a job asks for (issue 14): resources, native flags, environment, outputs -------------------------
# Resources after PSI/J's ResourceSpecV1 and JobAttributes (their names in brackets); each scheduler maps them to
# its own flags and a field it cannot honour is a 400 naming it. On input memory and walltime take units too;
# a job shows them in bytes and seconds.
ENV_NAME_PATTERN = "^[A-Za-z_][A-Za-z0-9_]{0,254}$"
MEMORY = {"oneOf": [{"type": "integer", "minimum": 1, "maximum": 2 ** 50},
                    {"type": "string", "minLength": 1, "maxLength": 32}],
          "description": "memory per node: bytes, or a number with a unit K, M, G, T (powers of 1024), e.g. \"512M\""}
WALLTIME = {"oneOf": [{"type": "integer", "minimum": 1, "maximum": 366 * 86400},
                      {"type": "string", "minLength": 1, "maxLength": 32}],
            "description": "the longest the job may run: seconds, \"[D-]HH:MM:SS\" or a number with s, m, h or d "
                           "[duration]; over it the scheduler stops the job (ERROR with its reason)"}
SCHED_NAME = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[A-Za-z0-9_.@*][A-Za-z0-9_.@*,:+=/-]*$"}
RESOURCES = {
    "type": "object", "additionalProperties": False,
    "description": "what the job needs from its scheduler; each field left out is the scheduler's default",
    "properties": {
        "nodes": {"type": "integer", "minimum": 1, "maximum": 100000, "description": "nodes [node_count]"},
        "tasks": {"type": "integer", "minimum": 1, "maximum": 1000000, "description": "tasks in all [process_count]"},
        "cores_per_task": {"type": "integer", "minimum": 1, "maximum": 100000,
                           "description": "CPU cores of each task [cpu_cores_per_process]"},
        "memory": MEMORY, "walltime": WALLTIME,
        "gpus_per_node": {"type": "integer", "minimum": 0, "maximum": 1024},
        "native_queue": SCHED_NAME | {"description": "the scheduler's own queue or partition [queue_name]"},
        "account": SCHED_NAME | {"description": "the account or project charged [project_name]"},
    },
}
RESOURCES_PATCH = {**RESOURCES, "description": "merged into the job's resources; null removes a field",
                   "properties": {k: {"oneOf": (v["oneOf"] if "oneOf" in v else [v]) + [{"type": "null"}]}
                                  for k, v in RESOURCES["properties"].items()}}
NATIVE = {"type": "array", "maxItems": 64, "items": {"type": "string", "minLength": 1, "maxLength": 4096},
          "description": "flags for the job's scheduler (qsub, sbatch), each argv element as it is, after metasched's "
                         "own; flags metasched sets (name, working directory, output, environment, hold, ...) are "
                         "refused with the field that replaces them"}
ENV = {"type": "object", "additionalProperties": {"type": "string", "maxLength": 16384},
       "description": "variables the job gets (NAME: value; names " + ENV_NAME_PATTERN + ", at most 256 variables "
                      "and 32 KiB), passed by the scheduler's own mechanism, never through a shell"}
EXPORT = {"oneOf": [{"type": "string", "enum": ["all", "none"]},
                    {"type": "array", "maxItems": 256, "items": {"type": "string", "pattern": ENV_NAME_PATTERN}}],
          "description": "what the job also inherits of the submission environment on the scheduler's side (the "
                         "scheduler client's, as the owner; sudo's own variables never): all, none, or these "
                         "names; left out: the scheduler's default (Slurm: all, Grid Engine: none, local: all)"}
OUTPUT = {"type": "string", "minLength": 1, "maxLength": 4096,
          "description": "a file path, absolute or relative to pwd; %j is the job id, %x the job name, %a an "
                         "array task's index (an array's patterns must have it: each task writes its own file; a "
                         "plain job's may not), %% a percent sign; left out: the scheduler's default file"}
SPEC_FIELDS = {"resources": RESOURCES, "native": NATIVE, "env": ENV, "export": EXPORT, "stdout": OUTPUT,
               "stderr": OUTPUT, "join": {"type": "boolean", "description": "stderr goes into the stdout file"}}
SPEC_PATCH = {"resources": RESOURCES_PATCH, "native": NATIVE, "env": ENV,
              "export": {"oneOf": EXPORT["oneOf"] + [{"type": "null"}], "description": EXPORT["description"]},
              "stdout": {"oneOf": [OUTPUT, {"type": "null"}]}, "stderr": {"oneOf": [OUTPUT, {"type": "null"}]},
              "join": SPEC_FIELDS["join"]}

NOTIFY = {
    "type": "object", "additionalProperties": False,
    "description": "tell the job's owner about it: by mail (the service's SMTP relay) and/or a webhook (a POST of the "
                   "event as JSON, signed: X-Metasched-Signature: sha256=HMAC-SHA256(secret, body); "
                   "X-Metasched-Event-Id: dedup by it, delivery is at least once)",
    "properties": {
        "on": {"type": "array", "maxItems": 3, "items": {"type": "string", "enum": ["start", "end", "fail"]},
               "description": "start: it began running; end: it ended (any final state); fail: it ended in ERROR "
                              "(default [end])"},
        "email": text(254, 3, r"^[^\x00-\x20\x7f]*$", "must be a mail address", "mail address"),
        "webhook": text(2048, 8, r"^https?://[^\x00-\x20\x7f]*$", "must be an http:// or https:// URL",
                        "URL the events are POSTed to (not loopback, nor this service)"),
        "secret": text(256, 16, r"^[^\x00-\x1f\x7f]*$", "must not contain control characters",
                       "the webhook's signing key (default: a random one, shown with the job)"),
    },
}
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
        "queue": QUEUE_REF, "path": SCRIPT_PATH, "name": NAME, "options": ARGS, "pwd": DIRECTORY,
        "notify": NOTIFY,
        "hold": {"type": "boolean", "description": "submit it held: not dispatched until released"},
        "owner": user_name("admins only: submit on behalf of this user (default: the caller)"),
        **SPEC_FIELDS,
        "array": ARRAY, "after": AFTER,
    },
}
JOB_PATCH = {
    "type": "object", "additionalProperties": False, "minProperties": 1,
    "properties": {"queue": QUEUE_REF, "path": SCRIPT_PATH, "name": NAME, "options": ARGS, "pwd": DIRECTORY,
                   **SPEC_PATCH,
                   "after": AFTER | {"description": "replaces the job's dependencies ({} removes them)"}},
}
MODE_PUT = {
    "type": "object", "additionalProperties": False, "minProperties": 1,
    "properties": {
        "policy": {"type": "string", "enum": [p.value for p in Policy]},
        "high_priority": {"oneOf": [QUEUE_REF["oneOf"][0], QUEUE_REF["oneOf"][1], {"type": "null"}]},
        "weights": {"type": "object", "propertyNames": QUEUE_REF["oneOf"][1],
                    "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 100},
                    "description": "queue id or name -> weight 0..100 (shared, dynamic)"},
    },
}
TOKEN_CREATE = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "description": text(200, description="what the token is for"),
        "expires_in_days": {"type": "number", "exclusiveMinimum": 0, "maximum": 3650},
        "user": user_name("admins only: a token for this user"),
    },
}

ERROR = {
    "type": "object", "required": ["title", "description", "status"],
    "properties": {"title": {"type": "string"}, "description": {"type": "string"}, "status": {"type": "integer"},
                   "field": {"type": "string", "description": "the one field (or parameter) that was wrong"},
                   "fields": {"type": "array", "items": {"type": "string"},
                              "description": "the fields that were wrong (unknown or missing)"}},
}
NUM = {"type": ["number", "null"]}
COUNT = {"type": ["integer", "null"], "minimum": 0}
ACCOUNTING = {
    "type": ["object", "null"],
    "description": "what the job used, recorded with its final state (null: it never ran, or nothing reported it). "
                   "Each field is as its scheduler reported it, or null when it reported nothing: never estimated. "
                   "sources names where each reported field came from: qacct (Grid Engine), scontrol or jobcomp "
                   "(Slurm), rusage and wrapper (the local wrapper: the kernel's rusage of the job's processes, "
                   "its wall time on the node's boot clock), yarn (the application report), agent (the node "
                   "agents' own measurements while the job ran: for what the scheduler does not report, e.g. "
                   "CPU time and memory of Slurm jobs without slurmdbd)",
    "required": ["start_time", "end_time", "nodes", "wall_seconds", "cpu_user_seconds", "cpu_system_seconds",
                 "cpu_seconds", "max_rss_bytes", "exit_signal", "sources", "extra"],
    "properties": {
        "start_time": TIME, "end_time": TIME,
        "nodes": {"type": ["string", "null"], "description": "where it ran, as the scheduler names the nodes"},
        "wall_seconds": NUM, "cpu_user_seconds": NUM, "cpu_system_seconds": NUM,
        "cpu_seconds": {"type": ["number", "null"], "description": "CPU time, user + system"},
        "max_rss_bytes": {"type": ["integer", "null"], "description": "peak resident memory"},
        "exit_signal": {"type": ["integer", "null"], "description": "the signal that ended it, if one did"},
        "sources": {"type": "object", "additionalProperties": {"type": "string"}},
        "extra": {"type": "object", "description": "what only its scheduler reports (YARN's allocated MB- and "
                                                   "vcore-seconds and AM host, Grid Engine's maxvmem and failed "
                                                   "code, the number of records or array tasks)"},
    },
}
JOB_USAGE = {
    "type": ["object", "null"],
    "description": "the latest measurement of the job's processes by the node agents (null: never seen running)",
    "required": ["at", "nodes", "cpu_seconds", "cpu_percent", "rss_bytes", "max_rss_bytes", "pids"],
    "properties": {
        "at": {"type": "string"}, "nodes": {"type": "array", "items": {"type": "string"}},
        "cpu_seconds": {"type": "number", "description": "CPU time (user + system) of its processes so far"},
        "cpu_percent": {"type": ["number", "null"], "description": "over the last poll cycle, 100 = one core"},
        "rss_bytes": {"type": "integer"}, "max_rss_bytes": {"type": "integer", "description": "largest seen"},
        "pids": {"type": "integer"}, "samples": {"type": "integer"},
    },
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
                 "finished_at", "updated_at", "accounting", "links", "array", "after"],
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
                                                   "output": {"type": "string"}, "metrics": {"type": "string"},
                                                   "why": {"type": "string"}, "tasks": {"type": "string"}}},
        # -- what the job asks for (issue 14) --
        "resources": {"type": "object", "description": "what was asked for (memory in bytes per node, walltime in "
                                                       "seconds); {}: the scheduler's defaults",
                      "properties": {k: ({"type": "integer"} if k not in ("native_queue", "account")
                                         else {"type": "string"}) for k in RESOURCES["properties"]}},
        "native": {"type": "array", "items": {"type": "string"}},
        "env_names": {"type": "array", "items": {"type": "string"},
                      "description": "the names of the job's variables (GET /jobs/{id} shows their values in env)"},
        "export": {"type": ["string", "array", "null"], "items": {"type": "string"}},
        "stdout": {"type": ["string", "null"], "description": "the stdout pattern asked for (null: the default)"},
        "stderr": {"type": ["string", "null"]}, "join": {"type": "boolean"},
        # -- what the job used (issue 15) --
        "accounting": ACCOUNTING,
        "metrics": JOB_USAGE | {"description": "with include=metrics: " + JOB_USAGE["description"]},
        # -- workflows (issue 16) --
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
JOB["required"] += ["resources", "native", "env_names", "export", "stdout", "stderr", "join"]
OUTPUT_FILES = {
    "type": "object", "required": ["stdout", "stderr", "join"],
    "description": "where the job's output goes, resolved (null: not known before the job is dispatched, when the "
                   "scheduler names the file after its own job id; stderr null when joined): read it with GET "
                   "/jobs/{id}/output",
    "properties": {"stdout": {"type": ["string", "null"]}, "stderr": {"type": ["string", "null"]},
                   "join": {"type": "boolean"}},
}
NOTIFY_SHOWN = {"type": ["object", "null"], "required": ["on", "email", "webhook", "secret"],
                "properties": {"on": {"type": "array", "items": {"type": "string"}},
                               "email": {"type": ["string", "null"]}, "webhook": {"type": ["string", "null"]},
                               "secret": {"type": ["string", "null"]}}}
JOB_DETAIL = {**JOB, "required": JOB["required"] + ["env", "outputs", "notify"],
              "properties": {**JOB["properties"], "outputs": OUTPUT_FILES, "notify": NOTIFY_SHOWN,
                             "env": {"type": "object", "additionalProperties": {"type": "string"}}}}
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
DELIVERY = {
    "type": "object", "required": ["channel", "hook", "address", "state", "attempts", "last_error", "next_attempt_at",
                                   "delivered_at"],
    "properties": {"channel": {"type": "string", "enum": ["webhook", "email"]},
                   "hook": {"type": ["string", "null"], "description": "the site hook's name; null: the job's notify"},
                   "address": {"type": "string"},
                   "state": {"type": "string", "enum": ["pending", "delivered", "failed"]},
                   "attempts": {"type": "integer"}, "last_error": {"type": ["string", "null"]},
                   "next_attempt_at": TIME, "delivered_at": TIME},
}
JOB_EVENT = {**EVENT, "required": EVENT["required"] + ["event_id", "deliveries"],
             "properties": {**EVENT["properties"],
                            "event_id": {"type": ["integer", "null"], "description": "its id in GET /events and the "
                                                                                     "stream (X-Metasched-Event-Id)"},
                            "deliveries": {"type": "array", "items": DELIVERY}}}
EVENT_LIST = {"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": JOB_EVENT}}}
FEED_EVENT = {
    "type": "object", "required": ["id", "type", "at", "actor"],
    "description": "one event of the log: a job's change (type job) or the cluster's (type cluster: kind mode, "
                   "node_down, node_up); the same document in GET /events, the stream's data lines and webhook bodies",
    "properties": {
        "id": {"type": "integer"}, "type": {"type": "string", "enum": ["job", "cluster"]},
        "at": {"type": "string"}, "actor": {"type": "string"},
        "job": {"type": "object", "required": ["id", "name", "owner", "queue"],
                "properties": {"id": {"type": "integer"}, "name": {"type": ["string", "null"]},
                               "owner": {"type": ["string", "null"]}, "queue": {"type": ["integer", "null"]}}},
        "old_status": {"type": ["string", "null"]}, "new_status": {"type": ["string", "null"]},
        "reason": {"type": ["string", "null"]}, "exit_code": {"type": ["integer", "null"]},
        "kind": {"type": ["string", "null"]}, "detail": {"type": "object"},
    },
}
FEED_PAGE = {
    "type": "object", "required": ["items", "next", "last_id"],
    "properties": {"items": {"type": "array", "items": FEED_EVENT}, "next": {"type": ["string", "null"]},
                   "last_id": {"type": "integer", "description": "resume after this id (GET /events?after=, "
                                                                 "the stream's Last-Event-ID)"}},
}
QUEUE = {
    "type": "object",
    "required": ["id", "name", "type", "master_node_id", "weight", "reachable", "jobs", "foreign_jobs", "script"],
    "properties": {
        "id": {"type": "integer"}, "name": {"type": "string"},
        "type": {"type": "string", "enum": list(TYPES)},
        "master_node_id": {"type": "integer"}, "weight": {"type": "integer"},
        "reachable": {"type": ["boolean", "null"]}, "last_error": {"type": ["string", "null"]},
        "jobs": {"type": "object", "properties": {s: {"type": "integer"} for s in STATUSES},
                 "required": STATUSES},
        "foreign_jobs": {"type": "object", "properties": {s: {"type": "integer"} for s in FOREIGN_STATES},
                         "required": FOREIGN_STATES,
                         "description": "jobs submitted to the scheduler directly, not through metasched"},
        "script": {"type": "string", "enum": ["executable", "readable"],
                   "description": "what a job's script must be for this scheduler: run as a program, or read by "
                                  "its client (Grid Engine's script mode, a YARN jar): what the CLI checks at submit"},
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
        "metrics": {
            "type": ["object", "null"],
            "description": "the node's latest figures, measured by its agent each poll cycle (null until then)",
            "properties": {
                "at": {"type": "string"}, "cpu_percent": NUM, "memory_percent": NUM, "memory_total_bytes": COUNT,
                "memory_available_bytes": COUNT,
                "disk_percent": {"type": ["number", "null"], "description": "the fullest of the job filesystems"},
                "disks": {"type": "array", "description": "the filesystems the jobs work in (and metrics.disk_paths)",
                          "items": {"type": "object", "properties": {
                              "mount": {"type": ["string", "null"]}, "size_bytes": {"type": "integer"},
                              "used_bytes": {"type": "integer"}, "available_bytes": {"type": "integer"},
                              "used_percent": NUM}}},
                "load": {"type": ["array", "null"], "items": {"type": "number"}}, "ncpus": COUNT,
                "jobs": {"type": "integer", "description": "our jobs whose processes it saw"}},
        },
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
                        "written_share": {"type": ["number", "null"],
                                          "description": "the percent the weight was written for: the target, "
                                                         "corrected by the feedback step while the measured share "
                                                         "of a busy group stays off its target"},
                        "cap_cores": {"type": ["number", "null"],
                                      "description": "the CPU its group may use (cgroup cpu quota, in cores): set "
                                                     "by the feedback step only while a group short of its "
                                                     "target takes the CPU the cap frees; null: no cap"},
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

JOB_SAMPLE = {
    "type": "object", "required": ["at", "cpu_seconds", "cpu_percent", "rss_bytes", "pids", "nodes"],
    "properties": {"at": {"type": "string"}, "cpu_seconds": {"type": "number"}, "cpu_percent": NUM,
                   "rss_bytes": {"type": "integer"}, "pids": {"type": "integer"},
                   "nodes": {"type": "array", "items": {"type": "string"}}},
}
JOB_METRICS = {
    "type": "object",
    "required": ["job_id", "status", "latest", "max_rss_bytes", "sample_interval_seconds", "items", "next"],
    "properties": {
        "job_id": {"type": "integer"}, "status": {"type": "string", "enum": STATUSES}, "latest": JOB_USAGE,
        "max_rss_bytes": COUNT, "sample_interval_seconds": {
            "type": "number", "description": "seconds between its stored samples now (it doubles each time the job "
                                             "reaches metrics.max_samples_per_job: every other sample is removed)"},
        "items": {"type": "array", "items": JOB_SAMPLE}, "next": {"type": ["string", "null"]},
    },
}
NODE_METRICS = {
    "type": "object", "required": ["node_id", "latest", "items", "next"],
    "properties": {
        "node_id": {"type": "integer"}, "latest": {"type": ["object", "null"]},
        "items": {"type": "array", "items": {"type": "object", "properties": {
            "at": {"type": "string"}, "cpu_percent": NUM, "memory_percent": NUM, "disk_percent": NUM,
            "load1": NUM, "jobs": COUNT}}},
        "next": {"type": ["string", "null"]},
    },
}
USAGE_GROUP = {
    "type": "object",
    "required": ["key", "name", "jobs", "completed", "failed", "cancelled", "failure_rate", "cpu_hours", "cpu_jobs",
                 "wall_hours", "wall_jobs", "wait_p50_seconds", "wait_p95_seconds", "waited_jobs"],
    "properties": {
        "key": {"type": "string", "description": "the user name, or the queue id"}, "name": {"type": "string"},
        "jobs": {"type": "integer", "description": "jobs that ended in the window"},
        "completed": {"type": "integer"}, "failed": {"type": "integer", "description": "ended in ERROR"},
        "cancelled": {"type": "integer"},
        "failure_rate": {"type": ["number", "null"], "description": "failed / (completed + failed)"},
        "cpu_hours": {"type": "number", "description": "of the cpu_jobs whose CPU time was reported"},
        "cpu_jobs": {"type": "integer"},
        "wall_hours": {"type": "number", "description": "of the wall_jobs whose wall time was reported"},
        "wall_jobs": {"type": "integer"},
        "wait_p50_seconds": NUM, "wait_p95_seconds": {"type": ["number", "null"],
                                                      "description": "submit to start, nearest rank"},
        "waited_jobs": {"type": "integer", "description": "jobs that started (the wait is measured on them)"},
    },
}
USAGE = {
    "type": "object", "required": ["since", "until", "group_by", "owner", "groups", "total", "shares"],
    "properties": {
        "since": {"type": "string"}, "until": {"type": "string"},
        "group_by": {"type": "string", "enum": ["user", "queue"]},
        "owner": {"type": ["string", "null"], "description": "whose jobs (null: everyone's, admins only)"},
        "groups": {"type": "array", "items": USAGE_GROUP}, "total": USAGE_GROUP,
        "shares": {"type": "array", "description": "per node and scheduler over the window: the CPU its group got "
                                                   "(measured_share, percent of the schedulers' CPU there) next to "
                                                   "the share the policy targeted, from the enforcement measurements "
                                                   "(summed per metrics.share_bucket_seconds: the buckets that overlap "
                                                   "the window count whole; measured_seconds says how long that was)",
                   "items": {"type": "object", "required": ["node_id", "queue_id", "measured_share", "target_share"],
                             "properties": {"node_id": {"type": "integer"}, "node": {"type": ["string", "null"]},
                                            "queue_id": {"type": "integer"}, "queue": {"type": ["string", "null"]},
                                            "measured_seconds": {"type": "number"},
                                            "cpu_seconds": {"type": "number"},
                                            "measured_share": NUM, "target_share": NUM}}},
    },
}
