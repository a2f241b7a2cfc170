"""One function per command: call the API, then print a table for people or the API's JSON (``--json``).

Each handler takes the parsed arguments and a ``Context`` and returns the exit status; errors travel as
``metasched.cli.client`` exceptions to ``metasched.cli.main``, the one place that maps them to statuses.
"""
from __future__ import annotations

import codecs
import datetime as _dt
import json
import os
import re
import shlex
import sys
import time
import urllib.parse
from dataclasses import dataclass, field

from . import render
from .client import Client, CliError, Endpoint, LocalError, Refused

STATES = ["TO_BE_QUEUED", "HELD", "DISPATCHING", "QUEUED", "RUNNING", "COMPLETED", "ERROR", "CANCELLED"]
ACTIVE = ["TO_BE_QUEUED", "HELD", "DISPATCHING", "QUEUED", "RUNNING"]
FINAL = {"COMPLETED", "ERROR", "CANCELLED"}
PAGE = 100        # jobs per request: long lists come in several pages, following the API's `next`


@dataclass
class Context:
    client: Client
    endpoint: Endpoint
    json: bool = False
    colour: bool = False
    out: object = field(default_factory=lambda: sys.stdout)
    _queues: list | None = None
    _me: dict | None = None

    def call(self, method: str, path: str, body: dict | None = None, query: dict | None = None):
        return self.client.call(method, path, body, query)

    def print(self, text: str = "") -> None:
        print(text, file=self.out)

    def emit_json(self, obj) -> None:
        print(json.dumps(obj, indent=2), file=self.out)

    def queues(self) -> list[dict]:
        if self._queues is None:
            self._queues = self.call("GET", "/queues")["items"]
        return self._queues

    def queue_name(self, queue_id) -> str:
        """The queue's name, escaped for printing."""
        return render.escape(next((q["name"] for q in self.queues() if q["id"] == queue_id), str(queue_id)))

    def me(self) -> dict:
        """Who the service thinks we are (user, admin): the only reliable answer over a token."""
        if self._me is None:
            self._me = self.call("GET", "/status")
            if not self._me.get("user"):
                raise Refused("the service does not know who you are: connect over its unix socket, "
                              "or give a token with --url", 401)
        return self._me


def queue_ref(value: str) -> int | str:
    """The API takes a queue id (number) or a scheduler name."""
    return int(value) if value.isdigit() else value


class JobRef(tuple):
    """``12`` or ``12.3`` (task 3 of array 12), as given on the command line."""

    @property
    def job(self) -> int:
        return self[0]

    @property
    def task(self) -> int | None:
        return self[1]

    @property
    def path(self) -> str:
        return f"/jobs/{self[0]}" + (f"/tasks/{self[1]}" if self[1] is not None else "")

    def __str__(self) -> str:
        return f"{self[0]}.{self[1]}" if self[1] is not None else str(self[0])


def job_ref(text: str) -> JobRef:
    import argparse
    job, dot, task = text.strip().partition(".")
    if not job.isdigit() or int(job) < 1 or (dot and not task.isdigit()):
        raise argparse.ArgumentTypeError(f"expected a job id (12) or a task of an array (12.3), got {text!r}")
    return JobRef((int(job), int(task) if dot else None))


def refs(values: list[str] | None, option: str) -> list[int | str]:
    """--after-ok 12,13.2 --after-ok 14 -> [12, "13.2", 14]."""
    out: list[int | str] = []
    for v in values or ():
        for part in v.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                r = job_ref(part)
            except Exception:
                raise LocalError(f"{option}: expected job ids (12) or tasks (12.3), got {part!r}") from None
            out.append(r.job if r.task is None else str(r))
    return out


def warn(message: str) -> None:
    print(f"metasched: {render.escape(message)}", file=sys.stderr)


# -- submit -------------------------------------------------------------------------------------

def cmd_submit(a, ctx: Context) -> int:
    try:
        cwd = os.getcwd()
    except FileNotFoundError:
        raise LocalError("the current directory no longer exists; cd somewhere else or give --pwd") from None
    script = os.path.normpath(os.path.join(cwd, a.script))
    pwd = os.path.normpath(os.path.join(cwd, a.pwd)) if a.pwd else cwd
    if a.queue is None:
        queues = ctx.queues()
        if len(queues) != 1:
            raise LocalError("give --queue: one of " + ", ".join(f"{q['name']} ({q['id']})" for q in queues))
        a.queue = str(queues[0]["id"])
    body = {"queue": queue_ref(a.queue), "path": script, "options": list(a.args), "pwd": pwd}
    if a.name:
        body["name"] = a.name
    if a.hold:
        body["hold"] = True
    body.update(spec_fields(a))
    notify = notify_fields(a)
    if notify:
        body["notify"] = notify
    if a.array:
        body["array"] = a.array
    after = {kind: refs(getattr(a, f"after_{kind}"), f"--after-{kind}") for kind in ("ok", "notok", "any", "started")}
    if any(after.values()):
        body["after"] = {k: v for k, v in after.items() if v}
    if ctx.endpoint.socket_path and not a.no_check:
        check_files(ctx, a.queue, script, pwd, body)
    job = ctx.call("POST", "/jobs", body)
    if a.parsable:
        ctx.print(str(job["id"]))
    elif ctx.json:
        ctx.emit_json(job)
    else:
        what = f"array {job['id']} of {job['array']['count']} tasks" if job.get("array") else f"job {job['id']}"
        ctx.print(f"submitted {what} ({render.escape(job['name'])}) to queue {ctx.queue_name(job['queue'])}: "
                  f"{render.state(job['status'], ctx.colour)}")
    return 0


MAIL_TYPES = {"BEGIN": ["start"], "START": ["start"], "END": ["end"], "FAIL": ["fail"],
              "ALL": ["start", "end", "fail"], "NONE": []}


def notify_fields(a) -> dict | None:
    """The API's notify from --mail-type, --mail-user and --notify-url (as sbatch's --mail-type/--mail-user)."""
    if a.mail_type is None and a.mail_user is None and a.notify_url is None:
        return None
    on: list[str] = []
    for word in (a.mail_type or "END").split(","):
        key = word.strip().upper()
        if key not in MAIL_TYPES:
            raise LocalError(f"--mail-type: {word.strip()!r} is not one of {', '.join(MAIL_TYPES)}")
        on += [x for x in MAIL_TYPES[key] if x not in on]
    if not on:
        return None                      # NONE: nothing to be told
    if a.mail_user is None and a.notify_url is None:
        raise LocalError("--mail-type: say where: --mail-user ADDR and/or --notify-url URL")
    out: dict = {"on": on}
    if a.mail_user is not None:
        out["email"] = a.mail_user
    if a.notify_url is not None:
        out["webhook"] = a.notify_url
    return out


def notify_line(j: dict) -> str | None:
    n = j.get("notify")
    if not n:
        return None
    where = [x for x in (n.get("email"), n.get("webhook")) if x]
    secret = f" (signing secret {n['secret']})" if n.get("secret") else ""
    return f"on {', '.join(n['on'])}: {', '.join(where)}{secret}"


# What the caller's environment never passes on to a job: sudo's variables and the CLI's own (its token above all).
NEVER_EXPORTED = ("SUDO_", "METASCHED_")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
ENV_MAX_BYTES = 32 * 1024      # what the service takes (services.ENV_MAX_BYTES)


def spec_fields(a) -> dict:
    """The API's resources, native, env, export, stdout, stderr and join from submit's (and edit's) options."""
    out: dict = {}
    res = {}
    for opt, key in (("nodes", "nodes"), ("tasks", "tasks"), ("cores", "cores_per_task"), ("gpus", "gpus_per_node"),
                     ("partition", "native_queue"), ("account", "account")):
        if getattr(a, opt, None) is not None:
            res[key] = getattr(a, opt)
    if getattr(a, "mem", None) is not None:
        if a.mem.strip().isdigit():
            raise LocalError(f"--mem: give a unit, e.g. {a.mem.strip()}M or {a.mem.strip()}G")
        res["memory"] = a.mem
    if getattr(a, "time", None) is not None:
        res["walltime"] = int(a.time) if a.time.strip().isdigit() else a.time.strip()
    if res:
        out["resources"] = res
    if getattr(a, "native", None):
        native = []
        for text in a.native:
            try:
                native += shlex.split(text)
            except ValueError as exc:
                raise LocalError(f"--native {text!r}: {exc}") from None
        out["native"] = native
    if getattr(a, "export", None) is not None or getattr(a, "env", None):
        out["env"], out["export"] = job_environment(getattr(a, "export", None) or "ALL", getattr(a, "env", None) or [])
    for opt, key in (("output", "stdout"), ("error", "stderr")):
        if getattr(a, opt, None) is not None:
            out[key] = getattr(a, opt)
    if getattr(a, "join", False):
        out["join"] = True
    return out


def job_environment(export: str, extra: list[str], environ=None) -> tuple[dict, str]:
    """(the variables the job gets, the API's export choice) for --export, like sbatch's: ALL (the default) is the
    caller's whole environment, NONE none of it, NAME[,NAME=VALUE...] those (ALL,... all and those); --env
    NAME=VALUE adds or sets one. Never SUDO_* nor METASCHED_* (NEVER_EXPORTED). The job then has exactly these
    (export "none": nothing else of the scheduler side's environment, sudo's included)."""
    environ = os.environ if environ is None else environ
    items = [x for x in export.split(",") if x]
    everything = bool(items) and items[0].upper() == "ALL"
    if items and items[0].upper() in ("ALL", "NONE"):
        items = items[1:]
    env, skipped = {}, []
    if everything:
        for k, v in environ.items():
            if k.startswith(NEVER_EXPORTED):
                continue
            if not ENV_NAME.match(k) or not _utf8(v):
                skipped.append(k)
                continue
            env[k] = v
    for item in items + list(extra):
        name, eq, value = item.partition("=")
        if not ENV_NAME.match(name):
            raise LocalError(f"--export/--env: {name!r} is not a variable name")
        if eq:
            env[name] = value
        elif name in environ and not name.startswith(NEVER_EXPORTED):
            if not _utf8(environ[name]):
                raise LocalError(f"--export: the value of {name} is not UTF-8 text; give it with --env {name}=...")
            env[name] = environ[name]
    if skipped:
        warn(f"warning: not exported (not a variable name, or not UTF-8 text): {' '.join(render.escape(k) for k in sorted(skipped))}")
    size = sum(len(k.encode()) + len(v.encode()) + 2 for k, v in env.items())
    if size > ENV_MAX_BYTES:
        raise LocalError(f"your environment is {size // 1024} KiB; a job takes at most {ENV_MAX_BYTES // 1024}: "
                         f"give --export=NONE or --export=NAME,... (or unset what the job does not need)")
    return env, "none"


def _utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:       # os.environ keeps undecodable bytes as surrogates
        return False
    return True


def tilde(path: str) -> str:
    home = os.path.expanduser("~")
    return "~" + path[len(home):] if home not in ("", "/") and (path + "/").startswith(home + "/") else path


def check_files(ctx: Context, queue: str, script: str, pwd: str, body: dict) -> None:
    """As the caller, on this machine (the frontend, which shares /home with its nodes): the script is there and
    executable (or readable, for a scheduler that reads it), pwd is there and writable, and so is the directory of
    an output file asked for. One line saying what to do, else nothing (--no-check: the files are only on the
    scheduler's nodes)."""
    hint = " (or --no-check if it lives only on the scheduler's nodes)"
    q = next((q for q in ctx.queues() if str(q["id"]) == queue or q["name"].lower() == queue.lower()), None)
    needs = (q or {}).get("script", "executable")
    shown = render.escape(tilde(script))
    if not os.path.lexists(script):
        raise LocalError(f"no such file: {shown}{hint}")
    if os.path.isdir(script):
        raise LocalError(f"{shown} is a directory, not a script")
    if needs == "executable" and not os.access(script, os.X_OK):
        raise LocalError(f"{shown} is not executable: chmod +x {shown}")
    if not os.access(script, os.R_OK) and needs == "readable":
        raise LocalError(f"{shown} is not readable: chmod u+r {shown}")
    where = render.escape(tilde(pwd))
    if not os.path.isdir(pwd):
        raise LocalError(f"no such directory: {where} (the job's working directory; --pwd DIR)")
    if not os.access(pwd, os.W_OK | os.X_OK):
        raise LocalError(f"cannot write {where}, the job's working directory: chmod u+w {where}, or --pwd DIR")
    for key, opt in (("stdout", "--output"), ("stderr", "--error")):
        pattern = body.get(key)
        if not pattern or "%" in os.path.dirname(pattern):
            continue
        d = os.path.dirname(os.path.normpath(os.path.join(pwd, pattern)))
        if not os.path.isdir(d):
            raise LocalError(f"no such directory for {opt}: {render.escape(tilde(d))} (mkdir -p {render.escape(tilde(d))})")
        if not os.access(d, os.W_OK | os.X_OK):
            raise LocalError(f"cannot write {render.escape(tilde(d))} ({opt}): chmod u+w {render.escape(tilde(d))}")


# -- jobs ---------------------------------------------------------------------------------------

def parse_states(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    out = []
    for v in values:
        for s in v.split(","):
            s = s.strip().upper()
            if not s:
                continue
            if s not in STATES:
                raise LocalError(f"--state: {s!r} is not one of {', '.join(STATES)}")
            out.append(s)
    return out or None


def owner_filter(ctx: Context, everyone: bool, owner: str | None) -> str | None:
    """Admins see every job unless they filter by owner; by default the CLI shows only your own."""
    if everyone and owner:
        raise LocalError("give either --all or --owner, not both")
    if owner:
        return owner
    me = ctx.me()
    if everyone:
        if not me.get("admin"):
            raise Refused("only admins can list everyone's jobs", 403)
        return None
    return me["user"]


def fetch_jobs(ctx: Context, statuses: list[str] | None, queue: str | None, owner: str | None,
               limit: int, path: str = "/jobs", newest: bool = False) -> tuple[list[dict], str | None]:
    """Follow the API's ``next`` links until ``limit`` jobs. Also returns the API path of the page after
    the jobs returned, or None when there are no more. ``path`` /foreign-jobs pages the same way."""
    query = {"status": ",".join(statuses) if statuses else None, "queue": queue, "owner": owner,
             "limit": str(min(limit, PAGE)), "order": "newest" if newest else None}
    page = ctx.call("GET", path, query=query)
    items = list(page["items"])
    while page.get("next") and len(items) < limit:
        page = ctx.call("GET", page["next"])
        items.extend(page["items"])
    # the API gives a next link exactly when more items follow (it looks one item ahead)
    more = len(items) > limit or bool(page.get("next"))
    items = items[:limit]
    if not more:
        return items, None
    rest = {k: v for k, v in query.items() if v is not None}
    rest.update({"before" if newest else "after": str(items[-1]["id"])})
    return items, f"{path}?" + urllib.parse.urlencode(rest)


TASK_ORDER = ["TO_BE_QUEUED", "HELD", "QUEUED", "RUNNING", "COMPLETED", "ERROR", "CANCELLED"]
TASK_WORDS = {"TO_BE_QUEUED": "waiting", "HELD": "held", "QUEUED": "queued", "RUNNING": "running",
              "COMPLETED": "completed", "ERROR": "failed", "CANCELLED": "cancelled"}


def task_counts(array: dict | None) -> str | None:
    """An array's tasks per state in a few words: '20 running, 400 completed, 580 queued'."""
    if not array:
        return None
    n = array.get("tasks") or {}
    return ", ".join(f"{n[s]} {TASK_WORDS[s]}" for s in TASK_ORDER if n.get(s))


def _resource(key: str):
    return lambda ctx, j: (j.get("resources") or {}).get(key)


# The columns `jobs -o` can show: header and how to get the value.
JOB_COLUMNS = {
    "id": ("ID", lambda ctx, j: j["id"]),
    "name": ("NAME", lambda ctx, j: j["name"]),
    "queue": ("QUEUE", lambda ctx, j: ctx.queue_name(j["queue"])),
    "owner": ("OWNER", lambda ctx, j: j["owner"]),
    "state": ("STATE", lambda ctx, j: render.state(j["status"], ctx.colour)),
    "submitted": ("SUBMITTED", lambda ctx, j: render.short_time(j["created_at"])),
    "started": ("STARTED", lambda ctx, j: render.short_time(j["started_at"])),
    "finished": ("FINISHED", lambda ctx, j: render.short_time(j["finished_at"])),
    "native": ("NATIVE ID", lambda ctx, j: j["scheduler_job_id"]),
    "exit": ("EXIT", lambda ctx, j: j["exit_code"]),
    "reason": ("REASON", lambda ctx, j: j["reason"] if j["status"] == "ERROR" else None),
    "nodes": ("NODES", _resource("nodes")),
    "tasks": ("TASKS", _resource("tasks")),
    "cores": ("CORES", _resource("cores_per_task")),
    "mem": ("MEM", lambda ctx, j: render.size((j.get("resources") or {}).get("memory"))),
    "time": ("TIME", lambda ctx, j: render.clock((j.get("resources") or {}).get("walltime"))),
    "gpus": ("GPUS", _resource("gpus_per_node")),
    "partition": ("PARTITION", _resource("native_queue")),
    "account": ("ACCOUNT", _resource("account")),
    "array": ("ARRAY", lambda ctx, j: task_counts(j.get("array"))),
}
DEFAULT_COLUMNS = ["id", "name", "queue", "state", "submitted", "exit", "reason"]
WIDE_COLUMNS = ["id", "name", "queue", "owner", "state", "submitted", "native", "exit", "reason"]


def parse_columns(text: str | None) -> list[str] | None:
    if text is None:
        return None
    cols = [c.strip().lower() for c in text.split(",") if c.strip()]
    bad = [c for c in cols if c not in JOB_COLUMNS]
    if bad or not cols:
        raise LocalError(f"--columns: {', '.join(bad) or 'none given'}: choose from {', '.join(JOB_COLUMNS)}")
    return cols


# An array task's line under its array (`jobs --expand`): these columns from the task, the others blank.
TASK_COLUMNS = {
    "id": lambda ctx, t: t["id"],
    "state": lambda ctx, t: render.state(t["status"], ctx.colour),
    "started": lambda ctx, t: render.short_time(t["started_at"]),
    "submitted": lambda ctx, t: render.short_time(t["started_at"]),
    "finished": lambda ctx, t: render.short_time(t["finished_at"]),
    "native": lambda ctx, t: t["native_id"],
    "exit": lambda ctx, t: t["exit_code"],
    "reason": lambda ctx, t: t["reason"] if t["status"] == "ERROR" else None,
}


def jobs_table(ctx: Context, jobs: list[dict], columns: list[str] | None = None, wide: bool = False,
               owners: bool = False, tasks: dict[int, list[dict]] | None = None) -> str:
    """Fits the terminal (80 columns when it is not one) by cutting the name, the reason and the queue, unless
    wide; the owner's column when the jobs are not all the caller's. An array is one line, with its tasks per
    state (ARRAY, last, when some job is an array and the columns were not chosen); ``tasks``: an array's tasks,
    each on a line of its own under it (``jobs --expand``)."""
    cols = columns or (WIDE_COLUMNS if wide else
                       DEFAULT_COLUMNS[:3] + (["owner"] if owners else []) + DEFAULT_COLUMNS[3:])
    if columns is None and any(j.get("array") for j in jobs):
        cols = cols + ["array"]
    rows = []
    for j in jobs:
        rows.append([JOB_COLUMNS[c][1](ctx, j) for c in cols])
        for t in (tasks or {}).get(j["id"], []):
            rows.append([TASK_COLUMNS[c](ctx, t) if c in TASK_COLUMNS else None for c in cols])
    # an array's tasks per state are cut first (`show ID` has them in full), then the name, the reason, ...
    soft = {"array": 10, "name": 16, "reason": 20, "queue": 10, "owner": 8}
    shrink = tuple((cols.index(c), soft[c]) for c in ("array", "name", "reason", "queue", "owner") if c in cols)
    return render.table([JOB_COLUMNS[c][0] for c in cols], rows, ctx.colour,
                        fit=None if wide else render.width(), shrink=shrink)


def fetch_tasks(ctx: Context, job_id: int) -> list[dict]:
    page = ctx.call("GET", f"/jobs/{job_id}/tasks", query={"limit": "1000"})
    items = list(page["items"])
    while page.get("next"):
        page = ctx.call("GET", page["next"])
        items.extend(page["items"])
    return items


def foreign_table(ctx: Context, jobs: list[dict]) -> str:
    """Jobs submitted to a scheduler directly: no metasched id, so the scheduler's own id comes first."""
    rows = [[ctx.queue_name(j["queue"]), j["native_id"], j["name"], j["owner"],
             _foreign_state(j["state"]) if ctx.colour else j["state"], render.short_time(j["start_time"]),
             render.short_time(j["first_seen"]), j["native_queue"]]
            for j in jobs]
    return render.table(["QUEUE", "NATIVE ID", "NAME", "OWNER", "STATE", "STARTED", "SEEN SINCE", "NATIVE QUEUE"],
                        rows, ctx.colour)


def _foreign_state(state: str) -> str:
    """Coloured like ours: PENDING as QUEUED, RUNNING as RUNNING."""
    c = render.Cell(state)
    c.colour = render.STATE_COLOURS["QUEUED" if state == "PENDING" else "RUNNING"]
    return c


def cmd_jobs(a, ctx: Context) -> int:
    if a.limit < 1:
        raise LocalError("--limit: give a number of jobs, 1 or more")
    if a.foreign:
        return foreign_jobs(a, ctx)
    statuses = parse_states(a.state)
    columns = parse_columns(a.columns)
    owner = owner_filter(ctx, a.all, a.owner)
    items, more = fetch_jobs(ctx, statuses, a.queue, owner, a.limit, newest=a.newest)
    if ctx.json:
        ctx.emit_json({"items": items, "next": more})
        return 0
    tasks = {j["id"]: fetch_tasks(ctx, j["id"]) for j in items if j.get("array")} if a.expand else None
    if not items:
        ctx.print("no jobs")
    else:
        ctx.print(jobs_table(ctx, items, columns, a.wide, owners=owner != ctx.me()["user"], tasks=tasks))
    if more:
        warn(f"showing the first {len(items)} jobs; there are more (raise --limit, or filter with --state)")
    return 0


def foreign_jobs(a, ctx: Context) -> int:
    """``jobs --foreign``: jobs submitted to the schedulers directly (plain qsub, sbatch), which metasched
    only observes: listed while their scheduler lists them pending or running."""
    if a.state:
        raise LocalError("--state does not apply to --foreign (those jobs are PENDING or RUNNING while listed)")
    owner = owner_filter(ctx, a.all, a.owner)
    items, more = fetch_jobs(ctx, None, a.queue, owner, a.limit, path="/foreign-jobs")
    if ctx.json:
        ctx.emit_json({"items": items, "next": more})
        return 0
    ctx.print("no jobs submitted directly to the schedulers" if not items else foreign_table(ctx, items))
    if more:
        warn(f"showing the first {len(items)} jobs; there are more (raise --limit, or filter with --queue)")
    return 0


# -- one job ------------------------------------------------------------------------------------

def job_fields(ctx: Context, j: dict) -> str:
    status = render.state(j["status"], ctx.colour)
    if j.get("cancel_requested") and j["status"] not in FINAL:
        colour = getattr(status, "colour", None)
        status = render.Cell(f"{status} (cancel requested)")
        status.colour = colour
    return render.fields([
        ("job", j["id"]), ("name", j["name"]), ("owner", j["owner"]),
        ("queue", f"{ctx.queue_name(j['queue'])} ({j['queue']})"), ("state", status), ("reason", j["reason"]),
        ("script", j["path"]), ("args", render.argv(j["options"])), ("directory", j["pwd"]),
        ("native id", j["scheduler_job_id"]), ("exit code", j["exit_code"]),
        ("array", f"{j['array']['spec']} ({j['array']['count']} tasks): {task_counts(j['array']) or '-'}"
         if j.get("array") else None),
        ("after", "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in j["after"].items()) if j.get("after")
         else None),
        ("submitted", render.long_time(j["created_at"])), ("dispatched", render.long_time(j["submitted_at"])),
        ("started", render.long_time(j["started_at"])), ("finished", render.long_time(j["finished_at"])),
        ("run time", render.duration(j["started_at"], j["finished_at"]) if j["started_at"] else None),
        *spec_lines(j),
        *used_fields(j),
        ("notify", notify_line(j)),
    ], ctx.colour)


def spec_lines(j: dict) -> list[tuple[str, object]]:
    """What the job asks for, for `show`: resources, native flags, environment, where its output goes."""
    r = j.get("resources") or {}
    words = [f"{label} {fmt(r[key])}" for key, label, fmt in (
        ("nodes", "nodes", str), ("tasks", "tasks", str), ("cores_per_task", "cores/task", str),
        ("memory", "memory", render.size), ("walltime", "walltime", render.clock), ("gpus_per_node", "gpus/node", str),
        ("native_queue", "partition", str), ("account", "account", str)) if key in r]
    names = j.get("env_names") or []
    export = j.get("export")
    env = (f"{len(names)} variable{'s' if len(names) != 1 else ''}" + (f": {' '.join(names[:8])}" if names else "")
           + (" ..." if len(names) > 8 else "") if names else None)
    export_text = {None: "the scheduler's default", "all": "all", "none": "none"}.get(
        export if isinstance(export, str) or export is None else "", ", ".join(export or []))
    outputs = j.get("outputs") or {}

    def where(stream: str) -> str | None:
        if stream == "stderr" and j.get("join"):
            return "joined into stdout"
        resolved = outputs.get(stream)
        return resolved or (f"{j.get(stream)} (when dispatched)" if j.get(stream) else "the scheduler's default"
                            + (" (named when dispatched)" if outputs and resolved is None else ""))
    return [("resources", ", ".join(words) or "the scheduler's defaults"),
            ("native flags", render.argv(j.get("native") or []) or None),
            ("environment", f"{env or 'none of its own'}; export {export_text}"),
            ("stdout", where("stdout")), ("stderr", where("stderr"))]


def used_fields(j: dict) -> list[tuple[str, object]]:
    """What the job used (issue 15): its accounting once it ended, each figure with where it came from, and
    its latest live measurement while it runs."""
    out: list[tuple[str, object]] = []
    a = j.get("accounting")
    if a:
        src = a.get("sources") or {}

        def said(value, *fields):
            names = sorted({src[f] for f in fields if f in src})
            return None if value is None else f"{value}  [{', '.join(names)}]" if names else value
        cpu = render.seconds(a["cpu_seconds"])
        if cpu and a["cpu_user_seconds"] is not None and a["cpu_system_seconds"] is not None:
            cpu += f" (user {render.seconds(a['cpu_user_seconds'])}, system {render.seconds(a['cpu_system_seconds'])})"
        out += [("cpu time", said(cpu, "cpu_seconds")), ("max rss", said(render.measured_size(a["max_rss_bytes"]), "max_rss_bytes")),
                ("wall time", said(render.seconds(a["wall_seconds"]), "wall_seconds")),
                ("ran on", said(a["nodes"], "nodes")),
                ("began", said(render.long_time(a["start_time"]) if a["start_time"] else None, "start_time")),
                ("ended", said(render.long_time(a["end_time"]) if a["end_time"] else None, "end_time"))]
        if a["exit_signal"] is not None:
            out.append(("signal", said(a["exit_signal"], "exit_signal")))
        out += [(render.escape(k.replace("_", " ")), v) for k, v in sorted((a.get("extra") or {}).items())]
    m = j.get("metrics")
    if m and j["status"] not in FINAL:
        out += [("cpu now", f"{render.percent(m['cpu_percent']) or '-'} ({render.seconds(m['cpu_seconds'])} so far)"),
                ("memory now", f"{render.measured_size(m['rss_bytes'])} (peak {render.measured_size(m['max_rss_bytes'])}, "
                               f"{m['pids']} processes on {', '.join(m['nodes'])})"),
                ("measured", render.long_time(m["at"]))]
    return out


def task_fields(ctx: Context, t: dict) -> str:
    return render.fields([
        ("task", t["id"]), ("state", render.state(t["status"], False)), ("reason", t["reason"]),
        ("native id", t["native_id"]), ("exit code", t["exit_code"]),
        ("started", render.long_time(t["started_at"])), ("finished", render.long_time(t["finished_at"])),
        ("run time", render.duration(t["started_at"], t["finished_at"]) if t["started_at"] else None),
    ])


def cmd_show(a, ctx: Context) -> int:
    item = ctx.call("GET", a.id.path, query={"include": "metrics"} if a.id.task is None else None)
    if ctx.json:
        ctx.emit_json(item)
    else:
        ctx.print(task_fields(ctx, item) if a.id.task is not None else job_fields(ctx, item))
    return 0


def events_table(ctx: Context, events: list[dict]) -> str:
    rows = []
    for e in events:
        new = render.state(e["new_status"], ctx.colour)
        if e["old_status"] is None:
            change = new
        elif e["old_status"] == e["new_status"]:
            change = render.Cell(f"({e['new_status']})")
        else:
            change = render.Cell(f"{e['old_status']} -> {e['new_status']}")
            change.colour = getattr(new, "colour", None)
        rows.append([render.short_time(e["at"]), change, e["actor"], e["reason"]])
    return render.table(["WHEN", "STATE", "BY", "REASON"], rows, ctx.colour)


def cmd_events(a, ctx: Context) -> int:
    events = ctx.call("GET", f"/jobs/{a.id.job}/events",
                      query={"task": str(a.id.task)} if a.id.task is not None else None)
    if ctx.json:
        ctx.emit_json(events)
    elif not events["items"]:
        ctx.print("no events")
    else:
        ctx.print(events_table(ctx, events["items"]))
    return 0


def cmd_cancel(a, ctx: Context) -> int:
    """Each id is reported on its own; one refusal makes the exit status 1 but does not stop the rest."""
    status, results = 0, []
    for job_id in a.ids:
        try:
            job = ctx.call("DELETE", job_id.path)
        except Refused as exc:
            status = 1
            results.append(exc.body or {"description": exc.message, "status": exc.status})
            warn(exc.message)
            continue
        results.append(job)
        if not ctx.json:
            what = f"task {job_id}" if job_id.task is not None else f"job {job_id}"
            if job["status"] == "CANCELLED":
                ctx.print(f"{what} cancelled")
            elif job_id.task is not None:
                ctx.print(f"{what}: cancel requested (it is {job['status']} in its scheduler)")
            else:
                ctx.print(f"{what}: cancel requested (it is {job['status']} in {ctx.queue_name(job['queue'])})")
    if ctx.json:
        ctx.emit_json(results)
    return status


def _job_action(ctx: Context, job_id: JobRef, action: str, verb: str) -> int:
    item = ctx.call("POST", f"{job_id.path}/{action}")
    if ctx.json:
        ctx.emit_json(item)
    elif job_id.task is not None:
        ctx.print(f"task {job_id} {verb}: {render.state(item['status'], ctx.colour)}")
    elif item.get("array") and item["status"] in ("QUEUED", "RUNNING"):
        ctx.print(f"array {job_id} {verb} in its scheduler: {task_counts(item['array'])}")
    else:
        ctx.print(f"job {job_id} {verb}: {render.state(item['status'], ctx.colour)}")
    return 0


def cmd_why(a, ctx: Context) -> int:
    w = ctx.call("GET", f"{a.id.path}/why")
    if ctx.json:
        ctx.emit_json(w)
        return 0
    ctx.print(w["summary"])
    for r in w["reasons"]:
        ctx.print(f"  - {r['detail'] or r['text']}")
    pairs = []
    if w.get("position") is not None:
        yours = f" (yours: {', '.join(map(str, w['ahead_yours']))})" if w.get("ahead_yours") else ""
        pairs.append(("place", f"{w['position']} in its queue, {w['ahead']} job(s) ahead{yours}"))
    if w.get("scheduler_reason"):
        pairs.append(("scheduler says", w["scheduler_reason"]))
    if w.get("since"):
        pairs.append(("since", render.long_time(w["since"])))
    if w.get("tasks"):
        pairs.append(("tasks", task_counts({"tasks": w["tasks"]})))
    if pairs:
        ctx.print(render.fields(pairs))
    return 0


def cmd_hold(a, ctx: Context) -> int:
    return _job_action(ctx, a.id, "hold", "held")


def cmd_release(a, ctx: Context) -> int:
    return _job_action(ctx, a.id, "release", "released")


def cmd_edit(a, ctx: Context) -> int:
    if a.args is not None and a.arg is not None:
        raise LocalError("give either --args ... or --arg (repeated), not both")
    body: dict = {}
    if a.name is not None:
        body["name"] = a.name
    if a.queue is not None:
        body["queue"] = queue_ref(a.queue)
    if a.script is not None:
        body["path"] = os.path.abspath(a.script)
    if a.pwd is not None:
        body["pwd"] = os.path.abspath(a.pwd)
    options = a.args if a.args is not None else a.arg
    if options is not None:
        body["options"] = list(options)
    body.update(spec_fields(a))
    if not body:
        raise LocalError("nothing to change: give --name, --queue, --script, --pwd, --args or --arg, or what the "
                         "job asks for (--cores, --mem, --time, --native, --export, --output, ...)")
    job = ctx.call("PATCH", f"/jobs/{a.id}", body)
    if ctx.json:
        ctx.emit_json(job)
    else:
        ctx.print(f"job {a.id} updated")
        ctx.print(job_fields(ctx, job))
    return 0


# -- output -------------------------------------------------------------------------------------

CHUNK = 1024 * 1024          # what one request asks for (the service may return less: its output_max_bytes)
FOLLOW_EVERY = 1.0           # seconds between looks at a followed output


def cmd_output(a, ctx: Context) -> int:
    """A job's stdout (or stderr), read by the service as the job's owner where the scheduler wrote it: all of it,
    its last --tail lines, and with --follow what it writes next, until the job has ended and nothing more came."""
    if a.tail is not None and a.tail < 0:
        raise LocalError("--tail: give a number of lines, 0 or more")
    stream = "stderr" if a.stderr else "stdout"
    job = ctx.call("GET", f"/jobs/{a.id.job}")
    # the state that says whether more may come: the job's, or its task's (an array's tasks have their own files)
    state = (lambda: ctx.call("GET", a.id.path)["status"]) if a.id.task is not None else None
    status = state() if state else job["status"]
    out = getattr(ctx.out, "buffer", None) or ctx.out
    tty = hasattr(ctx.out, "isatty") and ctx.out.isatty()
    escape = tty and not a.raw and job["owner"] != ctx.me()["user"]     # someone else's bytes to our terminal
    decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(data: bytes) -> None:
        if escape:
            data = render.safe_text(decoder.decode(data)).encode("utf-8")
        out.write(data)
        out.flush()

    url = f"/jobs/{a.id.job}/output" + (f"?task={a.id.task}" if a.id.task is not None else "")
    waited = False
    while True:
        try:
            offset = (tail_offset(ctx, url, stream, a.tail, write) if a.tail is not None
                      else copy_from(ctx, url, stream, 0, write))
            break
        except Refused as exc:
            if exc.status != 404 or not a.follow or status in FINAL:
                raise
            if not waited:
                warn(f"waiting for {'task' if a.id.task is not None else 'job'} {a.id}'s {stream} ({exc.message})")
                waited = True
            time.sleep(FOLLOW_EVERY)
            status = state() if state else ctx.call("GET", f"/jobs/{a.id.job}")["status"]
    while a.follow:
        ended = status in FINAL
        time.sleep(FOLLOW_EVERY)
        before = offset
        offset = copy_from(ctx, url, stream, offset, write)
        if ended and offset == before:
            break
        status = state() if state else ctx.call("GET", f"/jobs/{a.id.job}")["status"]
    return 0


def read_chunk(ctx: Context, url: str, stream: str, offset: int, length: int = CHUNK) -> tuple[bytes, int, int]:
    path, _, query = url.partition("?")       # an array's task: ?task=N
    data, headers = ctx.client.fetch(path, {**dict(urllib.parse.parse_qsl(query)), "stream": stream,
                                            "offset": str(offset), "length": str(length)})
    return data, int(headers.get("x-output-size", "0")), int(headers.get("x-output-offset", str(offset)))


def copy_from(ctx: Context, url: str, stream: str, offset: int, write) -> int:
    """Write everything from offset to the end of the file as it is now; the offset after it."""
    while True:
        data, size, start = read_chunk(ctx, url, stream, offset)
        if data:
            write(data)
        offset = start + len(data)
        if not data or offset >= size:
            return offset


def tail_offset(ctx: Context, url: str, stream: str, lines: int, write) -> int:
    """Write the last ``lines`` lines (reading backwards a chunk at a time); the offset where the file ended."""
    data, size, start = read_chunk(ctx, url, stream, -CHUNK)
    end = start + len(data)
    while start > 0 and data.count(b"\n") <= lines:
        more, _, start = read_chunk(ctx, url, stream, max(0, start - CHUNK), min(CHUNK, start))
        data = more + data
    if lines:
        keep = data.splitlines(keepends=True)[-lines:]
        write(b"".join(keep))
    return end


# -- cluster ------------------------------------------------------------------------------------

def reachable(value) -> str:
    return {True: "up", False: "DOWN", None: "unknown"}[value]


def queues_table(ctx: Context, queues: list[dict], mode: dict | None = None, wide: bool = False) -> str:
    """``mode`` (from /cluster/mode) gives the weights in force; a queue's own weight is the config's. Fits 80
    columns: WAIT counts held jobs too, DONE the completed ones, DIRECT the jobs submitted to the scheduler
    directly (pending/running); wide: every state in a column of its own."""
    weights = {s["queue_id"]: s["weight"] for s in (mode or {}).get("schedulers", [])}
    rows = []
    for q in queues:
        n = q["jobs"]
        f = q.get("foreign_jobs") or {}
        head = [q["id"], q["name"], q["type"], weights.get(q["id"], q["weight"]), reachable(q["reachable"])]
        direct = f"{f.get('PENDING', 0)}/{f.get('RUNNING', 0)}"
        if wide:
            rows.append(head + [n["TO_BE_QUEUED"], n["HELD"], n["DISPATCHING"] + n["QUEUED"], n["RUNNING"],
                                n["COMPLETED"], n["ERROR"], n["CANCELLED"], direct])
        else:
            rows.append(head + [n["TO_BE_QUEUED"] + n["HELD"], n["DISPATCHING"] + n["QUEUED"], n["RUNNING"],
                                n["COMPLETED"], n["ERROR"], direct])
    if wide:
        return render.table(["ID", "NAME", "TYPE", "WEIGHT", "STATE", "WAITING", "HELD", "QUEUED", "RUNNING",
                             "COMPLETED", "ERROR", "CANCELLED", "DIRECT Q/R"], rows, ctx.colour)
    return render.table(["ID", "NAME", "TYPE", "WEIGHT", "STATE", "WAIT", "QUEUED", "RUN", "DONE", "ERR", "DIRECT"],
                        rows, ctx.colour, fit=render.width(), shrink=((1, 8),))


def cmd_queues(a, ctx: Context) -> int:
    data = ctx.call("GET", "/queues")
    if ctx.json:
        ctx.emit_json(data)
    else:
        ctx.print(queues_table(ctx, data["items"], ctx.call("GET", "/cluster/mode"), wide=a.wide))
        errors = [f"{q['name']}: {q['last_error']}" for q in data["items"] if q.get("last_error")]
        for e in errors:
            ctx.print(f"  {render.escape(e)}")
    return 0


def cmd_nodes(a, ctx: Context) -> int:
    data = ctx.call("GET", "/cluster/nodes")
    if ctx.json:
        ctx.emit_json(data)
        return 0
    rows = [[n["id"], f"{n['ip']}:{n['port']}", "yes" if n["master"] else "", reachable(n["reachable"]),
             render.short_time(n["last_seen"]), " ".join(f"{x:.2f}" for x in n["load"]) if n["load"] else None,
             n.get("ncpus"), n["last_error"]] for n in data["items"]]
    ctx.print(render.table(["ID", "ADDRESS", "MASTER", "STATE", "LAST SEEN", "LOAD", "CPUS", "LAST ERROR"], rows))
    return 0


def mode_text(ctx: Context, mode: dict) -> str:
    hp = mode["high_priority"]
    head = render.fields([("policy", mode["policy"]),
                          ("high priority", f"{hp['name']} ({hp['queue_id']})" if hp else None),
                          ("changed", f"{render.short_time(mode['updated_at'])} by {mode['updated_by']}")])
    rows = [[s["queue_id"], s["name"], s.get("type"), s["weight"]] for s in mode["schedulers"]]
    return head + "\n\n" + render.table(["ID", "QUEUE", "TYPE", "WEIGHT"], rows)


def parse_weights(values: list[str] | None) -> dict | None:
    if not values:
        return None
    out = {}
    for v in values:
        q, sep, w = v.rpartition("=")
        if not sep or not q or not w.isdigit() or int(w) > 100:
            raise LocalError(f"--weight: expected QUEUE=WEIGHT with WEIGHT 0..100, got {v!r}")
        out[q] = int(w)
    return out


def cmd_mode(a, ctx: Context) -> int:
    if a.mode_action == "set":
        body: dict = {}
        if a.policy:
            body["policy"] = a.policy
        if a.high_priority is not None:
            body["high_priority"] = None if a.high_priority.lower() == "none" else queue_ref(a.high_priority)
        weights = parse_weights(a.weight)
        if weights:
            body["weights"] = weights
        if not body:
            raise LocalError("mode set: give a POLICY, --high-priority or --weight")
        if a.dry_run:
            return dry_run(ctx, ctx.call("PUT", "/cluster/mode", body, query={"dry_run": "true"}))
        mode = ctx.call("PUT", "/cluster/mode", body)
    else:
        mode = ctx.call("GET", "/cluster/mode")
    if ctx.json:
        ctx.emit_json(mode)
    else:
        ctx.print(mode_text(ctx, mode))
    return 0


def dry_run(ctx: Context, r: dict) -> int:
    if ctx.json:
        ctx.emit_json(r)
        return 0
    ctx.print("dry run: nothing was changed")
    ctx.print(mode_text(ctx, r["mode"]))
    ctx.print("")
    now = ", ".join(f"{k} {v:g}%" for k, v in r["current"]["shares"].items())
    ctx.print(f"would dispatch now: {len(r['dispatch'])} job(s) (under the mode in force: "
              f"{len(r['current']['dispatch'])}; its shares: {now})")
    if r["dispatch"]:
        rows = [[d["id"], d["name"], ctx.queue_name(d["queue"]), d["owner"]] for d in r["dispatch"][:20]]
        ctx.print(render.table(["ID", "NAME", "QUEUE", "OWNER"], rows))
        if len(r["dispatch"]) > 20:
            ctx.print(f"... and {len(r['dispatch']) - 20} more")
    for why, n in r["waiting"].items():
        ctx.print(f"  {n} job(s) would wait: {why}")
    ctx.print("")
    names = [s["name"] for s in r["shares"]]
    rows = [[n["node_id"], n["address"]] + [f"{n['shares'].get(q, 0):g}%" for q in names] for n in r["nodes"]]
    ctx.print(render.table(["NODE", "ADDRESS"] + [f"{q} SHARE" for q in names], rows))
    return 0


# -- tokens -------------------------------------------------------------------------------------

def token_state(t: dict) -> str:
    if t.get("revoked_at"):
        return "revoked"
    exp = render.parse_time(t.get("expires_at"))
    return "expired" if exp is not None and exp <= _dt.datetime.now(_dt.timezone.utc) else "active"


def cmd_token(a, ctx: Context) -> int:
    if a.token_action == "create":
        body: dict = {}
        if a.description is not None:
            body["description"] = a.description
        if a.days is not None:
            if a.days <= 0:
                raise LocalError("--days: give a positive number of days")
            body["expires_in_days"] = a.days
        if a.user:
            body["user"] = a.user
        tok = ctx.call("POST", "/tokens", body)
        if ctx.json:
            ctx.emit_json(tok)
            return 0
        # the secret alone on stdout (so `metasched token create > FILE` works); the rest on stderr
        print(f"token {tok['id']} for {render.escape(tok['user'])}, expires {render.long_time(tok['expires_at'])}.\n"
              f"This is the only time the secret is shown. Keep it in ~/.config/metasched/token (chmod 600)\n"
              f"or in METASCHED_TOKEN, and use it with --url (or METASCHED_URL):", file=sys.stderr)
        ctx.print(tok["token"])
        return 0
    if a.token_action == "revoke":
        tok = ctx.call("DELETE", f"/tokens/{a.id}")
        if ctx.json:
            ctx.emit_json(tok)
        else:
            ctx.print(f"token {tok['id']} of {render.escape(tok['user'])} revoked")
        return 0
    data = ctx.call("GET", "/tokens")
    if ctx.json:
        ctx.emit_json(data)
    elif not data["items"]:
        ctx.print("no tokens")
    else:
        rows = [[t["id"], t["user"], token_state(t), t["description"], render.short_time(t["created_at"]),
                 render.short_time(t["expires_at"]), render.short_time(t.get("last_used_at"))]
                for t in data["items"]]
        ctx.print(render.table(["ID", "USER", "STATE", "DESCRIPTION", "CREATED", "EXPIRES", "LAST USED"], rows))
    return 0


__all__ = ["Context", "CliError"]
