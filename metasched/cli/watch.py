"""``metasched watch``: a live view that follows the service's event stream (GET /events/stream) instead of
polling. On a terminal each frame replaces the previous one; into a pipe or a file every frame is printed below
the last, so logs stay readable. The view is drawn at start and again when an event arrives (at most once per
``--interval`` seconds; a keep-alive of the stream draws what was held back). ``--json``: one line per event
(cluster view) or the job each time it changes (``watch ID``).

``watch ID`` follows one job and ends when it does: exit 0 if it COMPLETED, 1 otherwise (ERROR, CANCELLED), so
that ``metasched watch 42 && next-step`` works like waiting for a process.

A restart of the service does not end either: when the stream drops, watch says "service restarting,
reconnecting" once (on stderr), tries again with a growing pause (at most 2 s), and resumes after the last event
it got (Last-Event-ID): nothing is missed and nothing is shown twice. Only an answer that is an error of ours
(401, 404, ...) ends it.
"""
from __future__ import annotations

import datetime as _dt
import json
import sys
import time

from . import commands as C
from .client import Refused, Unreachable

CLEAR = "\033[H\033[2J"
RESTARTING = "service restarting, reconnecting"
TRANSIENT = (502, 503, 504)           # a proxy or a service that is starting: try again


def _show(ctx: C.Context, frame: str, tty: bool) -> None:
    out = ctx.out
    if tty:
        out.write(CLEAR + frame + "\n")
    else:
        out.write(frame + "\n\n")
    out.flush()


def _header(ctx: C.Context, a, what: str) -> str:
    now = _dt.datetime.now().strftime("%H:%M:%S")
    return f"metasched {what}  {now}  following events, Ctrl-C to stop"


def job_frame(ctx: C.Context, a, job: dict, events: list[dict]) -> str:
    return "\n".join([_header(ctx, a, f"watch {job['id']}"), "", C.job_fields(ctx, job), "",
                      C.events_table(ctx, events)])


def cluster_frame(ctx: C.Context, a, mode: dict, queues: list[dict], jobs: list[dict], more) -> str:
    lines = [_header(ctx, a, f"watch  policy {mode['policy']}"), "", C.queues_table(ctx, queues, mode), ""]
    if jobs:
        lines.append(C.jobs_table(ctx, jobs, owners=a.all))
        if more:
            lines.append(f"... and more (showing {len(jobs)}; raise --limit)")
    else:
        lines.append("no active jobs" + ("" if a.all else " of yours"))
    return "\n".join(lines)


class Follower:
    """The event stream from a cursor, across restarts of the service: yields each event (a dict) and None for
    each keep-alive."""

    def __init__(self, ctx: C.Context, cursor: int, err=None, sleep=time.sleep):
        self.ctx, self.cursor = ctx, cursor
        self.err = err or sys.stderr
        self.sleep = sleep
        self.dropped = False          # announced, and not connected since

    def __iter__(self):
        pause = 0.1
        while True:
            try:
                for kind, eid, data in self.ctx.client.stream("/events/stream", self.cursor):
                    if kind == "open":
                        self.dropped, pause = False, 0.1
                    elif kind == "comment":
                        yield None
                    elif eid is not None:
                        self.cursor = eid
                        yield json.loads(data)
            except Unreachable:
                pass
            except Refused as exc:
                if exc.status not in TRANSIENT:
                    raise
            if not self.dropped:
                print(f"metasched: {RESTARTING}", file=self.err, flush=True)
                self.dropped = True
            self.sleep(pause)
            pause = min(pause * 2, 2.0)

    def call(self, method: str, path: str):
        """A request that waits out a restart like the stream does."""
        while True:
            try:
                return self.ctx.call(method, path)
            except Unreachable:
                pass
            except Refused as exc:
                if exc.status not in TRANSIENT:
                    raise
            if not self.dropped:
                print(f"metasched: {RESTARTING}", file=self.err, flush=True)
                self.dropped = True
            self.sleep(0.5)


def cmd_watch(a, ctx: C.Context) -> int:
    if a.interval < 0.1:
        raise C.LocalError("--interval: at least 0.1 seconds")
    tty = (not ctx.json) and hasattr(ctx.out, "isatty") and ctx.out.isatty()
    # the cursor is taken before anything is read: an event that happens meanwhile is not missed
    cursor = ctx.call("GET", "/events", query={"limit": 1, "after": 10 ** 17})["last_id"]
    follow = Follower(ctx, cursor)
    if a.id is not None:
        return _watch_job(a, ctx, tty, follow)
    try:
        return _watch_cluster(a, ctx, tty, follow)
    except KeyboardInterrupt:
        return 0          # Ctrl-C is how this view normally ends


def _watch_job(a, ctx: C.Context, tty: bool, follow: Follower) -> int:
    def draw() -> str:
        job = follow.call("GET", f"/jobs/{a.id}")
        if ctx.json:
            ctx.out.write(json.dumps(job) + "\n")
            ctx.out.flush()
        else:
            events = follow.call("GET", f"/jobs/{a.id}/events")["items"]
            _show(ctx, job_frame(ctx, a, job, events), tty)
        return job["status"]

    status = draw()
    if status in C.FINAL:
        return 0 if status == "COMPLETED" else 1
    for ev in follow:
        if ev is None or ev.get("type") != "job" or ev["job"]["id"] != a.id:
            continue
        status = draw()
        if status in C.FINAL:
            return 0 if status == "COMPLETED" else 1
    return 1   # not reached: the follower does not end


def _watch_cluster(a, ctx: C.Context, tty: bool, follow: Follower) -> int:
    owner = C.owner_filter(ctx, a.all, None)

    def draw() -> None:
        mode = follow.call("GET", "/cluster/mode")
        ctx._queues = None        # refresh the counts every frame
        queues = ctx.queues()
        jobs, more = C.fetch_jobs(ctx, C.ACTIVE, a.queue, owner, a.limit)
        _show(ctx, cluster_frame(ctx, a, mode, queues, jobs, more), tty)

    if not ctx.json:
        draw()
    drawn, held = time.monotonic(), False
    for ev in follow:
        if ctx.json:
            if ev is not None:
                ctx.out.write(json.dumps(ev) + "\n")
                ctx.out.flush()
            continue
        held = held or ev is not None
        if held and time.monotonic() - drawn >= a.interval:
            draw()
            drawn, held = time.monotonic(), False
    return 0
