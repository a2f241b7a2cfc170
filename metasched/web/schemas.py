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

JOB_SUBMIT = {
    "type": "object", "additionalProperties": False, "required": ["queue", "path"],
    "properties": {
        "queue": QUEUE_REF, "path": ABS_PATH, "name": NAME, "options": ARGS,
        "pwd": ABS_PATH | {"description": "working directory (default: the script's directory)"},
        "hold": {"type": "boolean", "description": "submit it held: not dispatched until released"},
        "owner": {"type": "string", "minLength": 1, "maxLength": 32,
                  "description": "admins only: submit on behalf of this user (default: the caller)"},
    },
}
JOB_PATCH = {
    "type": "object", "additionalProperties": False, "minProperties": 1,
    "properties": {"queue": QUEUE_REF, "path": ABS_PATH, "name": NAME, "options": ARGS, "pwd": ABS_PATH},
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
JOB = {
    "type": "object",
    "required": ["id", "name", "native_name", "queue", "owner", "status", "path", "options", "pwd", "scheduler_job_id",
                 "exit_code", "reason", "cancel_requested", "created_at", "submitted_at", "started_at",
                 "finished_at", "updated_at", "accounting", "links"],
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
        "accounting": ACCOUNTING,
        "metrics": JOB_USAGE | {"description": "with include=metrics: " + JOB_USAGE["description"]},
        "links": {"type": "object", "properties": {"self": {"type": "string"}, "events": {"type": "string"},
                                                   "metrics": {"type": "string"}}},
    },
}
JOB_LIST = {
    "type": "object", "required": ["items", "next"],
    "properties": {"items": {"type": "array", "items": JOB}, "next": {"type": ["string", "null"]}},
}
EVENT = {
    "type": "object", "required": ["id", "at", "old_status", "new_status", "actor", "reason"],
    "properties": {"id": {"type": "integer"}, "at": {"type": "string"},
                   "old_status": {"type": ["string", "null"]}, "new_status": {"type": "string"},
                   "actor": {"type": "string"}, "reason": {"type": ["string", "null"]}},
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
