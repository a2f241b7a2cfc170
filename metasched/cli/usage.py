"""``metasched history``, ``usage`` and ``top``: what jobs used (issue 15), like sacct, sreport and top.

history: the jobs that ended in a window, newest first, with where and how long they ran, their CPU time and
peak memory (GET /jobs?since=&until=). usage: the totals per user or queue, and how the CPU was split per node
next to the policy's targets (GET /usage). top: a live view of the running jobs' CPU and memory
(GET /jobs?status=RUNNING&include=metrics), refreshed like ``watch``.
"""
from __future__ import annotations

import json
import time

from . import commands as C
from . import render
from .client import LocalError
from .watch import _header, _show


def _when(value: str, option: str) -> str:
    try:
        return render.relative(value)
    except ValueError:
        raise LocalError(f"{option}: expected 30m, 12h, 2d, 1w or a date/time such as 2026-11-28 or "
                         f"2026-11-28T14:00, got {value!r}") from None


def _exit(j: dict) -> str | None:
    code, acct = j["exit_code"], j.get("accounting") or {}
    sig = acct.get("exit_signal")
    if code is None and sig is None:
        return None
    return f"{'-' if code is None else code}" + (f" (signal {sig})" if sig else "")


def history_table(ctx: C.Context, jobs: list[dict]) -> str:
    rows = []
    for j in jobs:
        a = j.get("accounting") or {}
        rows.append([j["id"], j["name"], ctx.queue_name(j["queue"]), j["owner"], render.state(j["status"], ctx.colour),
                     render.short_time(a.get("start_time") or j["started_at"]),
                     render.short_time(a.get("end_time") or j["finished_at"]), render.seconds(a.get("wall_seconds")),
                     render.seconds(a.get("cpu_seconds")), render.measured_size(a.get("max_rss_bytes")), a.get("nodes"),
                     _exit(j)])
    return render.table(["ID", "NAME", "QUEUE", "OWNER", "STATE", "START", "END", "ELAPSED", "CPU", "MAXRSS",
                         "NODES", "EXIT"], rows, ctx.colour)


def cmd_history(a, ctx: C.Context) -> int:
    if a.limit < 1:
        raise LocalError("--limit: give a number of jobs, 1 or more")
    owner = C.owner_filter(ctx, a.all, a.owner)
    query = {"since": _when(a.since, "--since"), "until": _when(a.until, "--until") if a.until else None,
             "status": ",".join(C.parse_states(a.state) or []) or None, "queue": a.queue, "owner": owner,
             "limit": str(min(a.limit, C.PAGE))}
    page = ctx.call("GET", "/jobs", query=query)
    items = list(page["items"])
    while page.get("next") and len(items) < a.limit:
        page = ctx.call("GET", page["next"])
        items.extend(page["items"])
    more = len(items) > a.limit or bool(page.get("next"))
    items = items[:a.limit]
    if ctx.json:
        ctx.emit_json({"items": items, "more": more})
        return 0
    ctx.print(history_table(ctx, items) if items else "no jobs ended in that window")
    if more:
        C.warn(f"showing the newest {len(items)} jobs; there are more (raise --limit, or narrow --since)")
    return 0


def _hours(v: float, n: int, of: int) -> str:
    return f"{v:.2f}" + ("" if n == of else f" ({n}/{of})")


def usage_text(ctx: C.Context, rep: dict) -> str:
    rows = []
    for g in rep["groups"] + ([rep["total"]] if len(rep["groups"]) != 1 else []):
        rows.append([g["name"], g["jobs"], g["completed"], g["failed"], g["cancelled"],
                     None if g["failure_rate"] is None else f"{100 * g['failure_rate']:.1f}%",
                     _hours(g["cpu_hours"], g["cpu_jobs"], g["jobs"]), _hours(g["wall_hours"], g["wall_jobs"], g["jobs"]),
                     render.seconds(g["wait_p50_seconds"]), render.seconds(g["wait_p95_seconds"])])
    head = (f"jobs that ended from {render.long_time(rep['since'])} to {render.long_time(rep['until'])}"
            + (f", {rep['owner']}'s" if rep["owner"] else ", everyone's"))
    out = [head, "", render.table([rep["group_by"].upper(), "JOBS", "DONE", "FAILED", "CANCELLED", "FAIL%",
                                   "CPU-H", "WALL-H", "WAIT-P50", "WAIT-P95"], rows) if rows else "no jobs"]
    if any(g["cpu_jobs"] != g["jobs"] or g["wall_jobs"] != g["jobs"] for g in rep["groups"]):
        out.append("(n/m): the hours of the n of m jobs whose scheduler or node agents reported them")
    if rep["shares"]:
        srows = [[s["node"] or s["node_id"], s["queue"] or s["queue_id"], render.percent(s["target_share"]),
                  render.percent(s["measured_share"]), render.seconds(s["cpu_seconds"]),
                  render.seconds(s["measured_seconds"])] for s in rep["shares"]]
        out += ["", "CPU split per node (enforcement measurements over the same window):",
                render.table(["NODE", "QUEUE", "TARGET", "MEASURED", "CPU", "MEASURED FOR"], srows)]
    return "\n".join(out)


def cmd_usage(a, ctx: C.Context) -> int:
    query = {"since": _when(a.since, "--since"), "until": _when(a.until, "--until") if a.until else None,
             "group_by": a.by, "owner": a.owner}
    rep = ctx.call("GET", "/usage", query=query)
    if ctx.json:
        ctx.emit_json(rep)
    else:
        ctx.print(usage_text(ctx, rep))
    return 0


def top_frame(ctx: C.Context, a, jobs: list[dict], nodes: list[dict]) -> str:
    jobs = sorted(jobs, key=lambda j: -((j.get("metrics") or {}).get("cpu_percent") or 0))
    rows = []
    for j in jobs:
        m = j.get("metrics") or {}
        rows.append([j["id"], j["name"], ctx.queue_name(j["queue"]), j["owner"], ",".join(m.get("nodes") or []),
                     render.percent(m.get("cpu_percent")), render.seconds(m.get("cpu_seconds")),
                     render.measured_size(m.get("rss_bytes")), render.measured_size(m.get("max_rss_bytes")), m.get("pids"),
                     render.duration(j["started_at"], None)])
    nrows = []
    for n in nodes:
        f = n.get("metrics") or {}
        nrows.append([f"{n['ip']}:{n['port']}", render.percent(f.get("cpu_percent")),
                      render.percent(f.get("memory_percent")), render.percent(f.get("disk_percent")),
                      " ".join(f"{x:.2f}" for x in f["load"]) if f.get("load") else None, f.get("jobs")])
    lines = [_header(ctx, a, "top"), "",
             render.table(["NODE", "CPU", "MEM", "DISK", "LOAD", "JOBS"], nrows), ""]
    lines.append(render.table(["ID", "NAME", "QUEUE", "OWNER", "NODES", "CPU%", "CPU", "RSS", "MAXRSS", "PIDS",
                               "RUNNING"], rows) if rows else "no running jobs" + ("" if a.all else " of yours"))
    return "\n".join(lines)


def cmd_top(a, ctx: C.Context) -> int:
    if a.interval < 0.1:
        raise LocalError("--interval: at least 0.1 seconds")
    owner = C.owner_filter(ctx, a.all, None)
    tty = (not ctx.json) and hasattr(ctx.out, "isatty") and ctx.out.isatty()
    try:
        while True:
            page = ctx.call("GET", "/jobs", query={"status": "RUNNING", "include": "metrics", "owner": owner,
                                                   "queue": a.queue, "limit": str(min(a.limit, 1000))})
            nodes = ctx.call("GET", "/cluster/nodes")["items"]
            if ctx.json:
                ctx.out.write(json.dumps({"jobs": page["items"], "nodes": nodes}) + "\n")
                ctx.out.flush()
            else:
                _show(ctx, top_frame(ctx, a, page["items"], nodes), tty)
            if a.once:
                return 0
            time.sleep(a.interval)
    except KeyboardInterrupt:
        return 0
