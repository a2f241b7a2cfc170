"""One function per command: call the API, then print a table for people or the API's JSON (``--json``).

Each handler takes the parsed arguments and a ``Context`` and returns the exit status; errors travel as
``metasched.cli.client`` exceptions to ``metasched.cli.main``, the one place that maps them to statuses.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import sys
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
        return next((q["name"] for q in self.queues() if q["id"] == queue_id), str(queue_id))

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
    print(f"metasched: {message}", file=sys.stderr)


# -- submit -------------------------------------------------------------------------------------

def cmd_submit(a, ctx: Context) -> int:
    try:
        cwd = os.getcwd()
    except FileNotFoundError:
        raise LocalError("the current directory no longer exists; cd somewhere else or give --pwd") from None
    script = os.path.normpath(os.path.join(cwd, a.script))
    if ctx.endpoint.socket_path and not os.path.exists(script):
        warn(f"warning: {script} does not exist here; submitting anyway (it must exist on the scheduler's nodes)")
    if a.queue is None:
        queues = ctx.queues()
        if len(queues) != 1:
            raise LocalError("give --queue: one of " + ", ".join(f"{q['name']} ({q['id']})" for q in queues))
        a.queue = str(queues[0]["id"])
    body = {"queue": queue_ref(a.queue), "path": script, "options": list(a.args),
            "pwd": os.path.normpath(os.path.join(cwd, a.pwd)) if a.pwd else cwd}
    if a.name:
        body["name"] = a.name
    if a.hold:
        body["hold"] = True
    if a.array:
        body["array"] = a.array
    after = {kind: refs(getattr(a, f"after_{kind}"), f"--after-{kind}") for kind in ("ok", "notok", "any", "started")}
    if any(after.values()):
        body["after"] = {k: v for k, v in after.items() if v}
    job = ctx.call("POST", "/jobs", body)
    if a.parsable:
        ctx.print(str(job["id"]))
    elif ctx.json:
        ctx.emit_json(job)
    else:
        what = f"array {job['id']} of {job['array']['count']} tasks" if job.get("array") else f"job {job['id']}"
        ctx.print(f"submitted {what} ({job['name']}) to queue {ctx.queue_name(job['queue'])}: "
                  f"{render.state(job['status'], ctx.colour)}")
    return 0


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
               limit: int, path: str = "/jobs") -> tuple[list[dict], str | None]:
    """Follow the API's ``next`` links until ``limit`` jobs. Also returns the API path of the page after
    the jobs returned, or None when there are no more. ``path`` /foreign-jobs pages the same way."""
    query = {"status": ",".join(statuses) if statuses else None, "queue": queue, "owner": owner,
             "limit": str(min(limit, PAGE))}
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
    rest.update(after=str(items[-1]["id"]))
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


def jobs_table(ctx: Context, jobs: list[dict], tasks: dict[int, list[dict]] | None = None) -> str:
    """One line per job, an array too (with its tasks per state); ``tasks``: an array's tasks, each on its own
    line (``jobs --expand``)."""
    rows = []
    for j in jobs:
        rows.append([j["id"], j["name"], ctx.queue_name(j["queue"]), j["owner"], render.state(j["status"], ctx.colour),
                     render.short_time(j["created_at"]), j["scheduler_job_id"],
                     j["exit_code"] if j["exit_code"] is not None else None, task_counts(j.get("array"))])
        for t in (tasks or {}).get(j["id"], []):
            rows.append([t["id"], "", "", "", render.state(t["status"], ctx.colour), render.short_time(t["started_at"]),
                         t["native_id"], t["exit_code"] if t["exit_code"] is not None else None, None])
    headers = ["ID", "NAME", "QUEUE", "OWNER", "STATE", "SUBMITTED", "NATIVE ID", "EXIT"]
    if any(j.get("array") for j in jobs):
        headers.append("TASKS")
    else:
        rows = [r[:-1] for r in rows]
    return render.table(headers, rows, ctx.colour)


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
    owner = owner_filter(ctx, a.all, a.owner)
    items, more = fetch_jobs(ctx, statuses, a.queue, owner, a.limit)
    if ctx.json:
        ctx.emit_json({"items": items, "next": more})
        return 0
    tasks = {j["id"]: fetch_tasks(ctx, j["id"]) for j in items if j.get("array")} if a.expand else None
    if not items:
        ctx.print("no jobs")
    else:
        ctx.print(jobs_table(ctx, items, tasks))
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
    if ctx.colour and isinstance(status, render.Cell):
        status = f"\033[{status.colour}m{status}\033[0m"
    if j.get("cancel_requested") and j["status"] not in FINAL:
        status += " (cancel requested)"
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
    ])


def task_fields(ctx: Context, t: dict) -> str:
    return render.fields([
        ("task", t["id"]), ("state", render.state(t["status"], False)), ("reason", t["reason"]),
        ("native id", t["native_id"]), ("exit code", t["exit_code"]),
        ("started", render.long_time(t["started_at"])), ("finished", render.long_time(t["finished_at"])),
        ("run time", render.duration(t["started_at"], t["finished_at"]) if t["started_at"] else None),
    ])


def cmd_show(a, ctx: Context) -> int:
    item = ctx.call("GET", a.id.path)
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
    if not body:
        raise LocalError("nothing to change: give --name, --queue, --script, --pwd, --args or --arg")
    job = ctx.call("PATCH", f"/jobs/{a.id}", body)
    if ctx.json:
        ctx.emit_json(job)
    else:
        ctx.print(f"job {a.id} updated")
        ctx.print(job_fields(ctx, job))
    return 0


# -- cluster ------------------------------------------------------------------------------------

def reachable(value) -> str:
    return {True: "up", False: "DOWN", None: "unknown"}[value]


def queues_table(ctx: Context, queues: list[dict], mode: dict | None = None) -> str:
    """``mode`` (from /cluster/mode) gives the weights in force; a queue's own weight is the config's."""
    weights = {s["queue_id"]: s["weight"] for s in (mode or {}).get("schedulers", [])}
    rows = []
    for q in queues:
        n = q["jobs"]
        f = q.get("foreign_jobs") or {}
        rows.append([q["id"], q["name"], q["type"], weights.get(q["id"], q["weight"]), reachable(q["reachable"]),
                     n["TO_BE_QUEUED"], n["HELD"], n["DISPATCHING"] + n["QUEUED"], n["RUNNING"], n["COMPLETED"],
                     n["ERROR"], n["CANCELLED"], f"{f.get('PENDING', 0)}/{f.get('RUNNING', 0)}"])
    return render.table(["ID", "NAME", "TYPE", "WEIGHT", "STATE", "WAITING", "HELD", "QUEUED", "RUNNING",
                         "COMPLETED", "ERROR", "CANCELLED", "DIRECT Q/R"], rows, ctx.colour)


def cmd_queues(a, ctx: Context) -> int:
    data = ctx.call("GET", "/queues")
    if ctx.json:
        ctx.emit_json(data)
    else:
        ctx.print(queues_table(ctx, data["items"], ctx.call("GET", "/cluster/mode")))
        errors = [f"{q['name']}: {q['last_error']}" for q in data["items"] if q.get("last_error")]
        for e in errors:
            ctx.print(f"  {e}")
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
        print(f"token {tok['id']} for {tok['user']}, expires {render.long_time(tok['expires_at'])}.\n"
              f"This is the only time the secret is shown. Keep it in ~/.config/metasched/token (chmod 600)\n"
              f"or in METASCHED_TOKEN, and use it with --url (or METASCHED_URL):", file=sys.stderr)
        ctx.print(tok["token"])
        return 0
    if a.token_action == "revoke":
        tok = ctx.call("DELETE", f"/tokens/{a.id}")
        if ctx.json:
            ctx.emit_json(tok)
        else:
            ctx.print(f"token {tok['id']} of {tok['user']} revoked")
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
