"""``metasched watch``: a live view. On a terminal each frame replaces the previous one; into a pipe or a
file every refresh prints one frame (``--json``: one JSON document per line), so logs stay readable.

``watch ID`` follows one job and ends when it does: exit 0 if it COMPLETED, 1 otherwise (ERROR,
CANCELLED), so that ``metasched watch 42 && next-step`` works like waiting for a process.
"""
from __future__ import annotations

import datetime as _dt
import json
import time

from . import commands as C

CLEAR = "\033[H\033[2J"


def _show(ctx: C.Context, frame: str, tty: bool) -> None:
    out = ctx.out
    if tty:
        out.write(CLEAR + frame + "\n")
    else:
        out.write(frame + "\n\n")
    out.flush()


def _header(ctx: C.Context, a, what: str) -> str:
    now = _dt.datetime.now().strftime("%H:%M:%S")
    return f"metasched {what}  {now}  every {a.interval:g}s, Ctrl-C to stop"


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


def cmd_watch(a, ctx: C.Context) -> int:
    if a.interval < 0.1:
        raise C.LocalError("--interval: at least 0.1 seconds")
    tty = (not ctx.json) and hasattr(ctx.out, "isatty") and ctx.out.isatty()
    if a.id is not None:
        return _watch_job(a, ctx, tty)
    try:
        return _watch_cluster(a, ctx, tty)
    except KeyboardInterrupt:
        return 0          # Ctrl-C is how this view normally ends


def _watch_job(a, ctx: C.Context, tty: bool) -> int:
    while True:
        job = ctx.call("GET", f"/jobs/{a.id}")
        if ctx.json:
            ctx.out.write(json.dumps(job) + "\n")
            ctx.out.flush()
        else:
            events = ctx.call("GET", f"/jobs/{a.id}/events")["items"]
            _show(ctx, job_frame(ctx, a, job, events), tty)
        if job["status"] in C.FINAL:
            return 0 if job["status"] == "COMPLETED" else 1
        time.sleep(a.interval)


def _watch_cluster(a, ctx: C.Context, tty: bool) -> int:
    owner = C.owner_filter(ctx, a.all, None)
    while True:
        mode = ctx.call("GET", "/cluster/mode")
        ctx._queues = None        # refresh the counts every frame
        queues = ctx.queues()
        jobs, more = C.fetch_jobs(ctx, C.ACTIVE, a.queue, owner, a.limit)
        if ctx.json:
            ctx.out.write(json.dumps({"mode": mode, "queues": queues, "jobs": jobs}) + "\n")
            ctx.out.flush()
        else:
            _show(ctx, cluster_frame(ctx, a, mode, queues, jobs, more), tty)
        time.sleep(a.interval)

