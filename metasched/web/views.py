"""The HTTP shape of every resource, in one place: model and service values in, JSON-ready dicts out.

Each function here is the one serialization of its resource (the CLI, the OpenAPI schemas in schemas.py
and the tests all read this shape); a listing's page and its ``next`` link are built by :func:`page`.
"""
from __future__ import annotations

import functools
import urllib.parse

from ..backends.base import TASK_SLOT, tag
from ..model import (ACCOUNTING_FIELDS, Accounting, ArraySpec, ArrayTask, ClusterEvent, ForeignJob, Job, JobEvent,
                     JobSample, JobUsage, Node, Token)
from ..services import (DryRun, JobDetail, JobMetrics, Mode, NodeMetrics, Page, QueueSummary, ShareUsage, Status,
                        UsageGroup, UsageReport, Why)

_NOT_GIVEN = object()


def job(j: Job, tasks: dict[str, int] | None = None, metrics=_NOT_GIVEN) -> dict:
    """A job; ``tasks``: an array's tasks per state (services.Shown gives both: ``job(*shown)``); with
    ``metrics`` (its latest JobUsage or None: include=metrics), its live measurement too.

    A page of jobs calls this once per job: what depends only on an immutable value is found once (a spec's
    resources, a tag's sanitised name, an array spec's parts), and what is empty is not built twice."""
    spec = j.spec
    base = f"/jobs/{j.id}"
    links = {"self": base, "events": base + "/events", "output": base + "/output", "metrics": base + "/metrics",
             "why": base + "/why"}
    array = None
    if j.array_spec:
        shown, count, limit = _array_shown(j.array_spec)
        array = {"spec": shown, "count": count, "limit": limit, "tasks": dict(tasks or {})}
        links["tasks"] = base + "/tasks"
    export = spec.export
    out = {
        "id": j.id, "name": j.name, "native_name": tag(j), "queue": j.queue_id, "owner": j.owner,
        "status": j.status.value,
        "path": j.path, "options": list(j.options), "pwd": j.pwd, "scheduler_job_id": j.scheduler_job_id,
        "exit_code": j.exit_code, "reason": j.reason, "cancel_requested": j.cancel_requested,
        "created_at": j.created_at, "submitted_at": j.submitted_at, "started_at": j.started_at,
        "finished_at": j.finished_at, "updated_at": j.updated_at,
        "links": links,
        # -- what the job asks for (issue 14); the variables' values only in job_detail --
        "resources": spec.resources.asked(), "native": list(spec.native),
        "env_names": [k for k, _ in spec.env] if spec.env else [],
        "export": export if not isinstance(export, tuple) else list(export),
        "stdout": spec.stdout, "stderr": spec.stderr, "join": spec.join,
        # -- what the job used (issue 15) --
        "accounting": accounting(j.accounting) if j.accounting is not None else None,
        # -- workflows (issue 16) --
        "array": array, "after": after(j.depends_on) if j.depends_on else None,
    }
    if metrics is not _NOT_GIVEN:
        out["metrics"] = job_usage(metrics)
    return out


@functools.lru_cache(maxsize=1024)
def _array_shown(array_spec: str) -> tuple[str, int, int | None]:
    """A stored array spec as users see it (without the poller's /held), its task count and its limit."""
    a = ArraySpec.parse(array_spec, internal=True)
    return str(ArraySpec(a.first, a.last, a.step, a.limit)), a.count, a.limit


def accounting(a: Accounting | None) -> dict | None:
    if a is None:
        return None
    return {**{k: getattr(a, k) for k in ACCOUNTING_FIELDS}, "sources": dict(a.sources), "extra": dict(a.extra)}


def job_usage(u: JobUsage | None) -> dict | None:
    if u is None:
        return None
    return {"at": u.at, "nodes": list(u.nodes), "cpu_seconds": round(u.cpu_seconds, 3), "cpu_percent": u.cpu_percent,
            "rss_bytes": u.rss_bytes, "max_rss_bytes": u.max_rss_bytes, "pids": u.pids, "samples": u.samples}


def job_sample(s: JobSample) -> dict:
    return {"at": s.at, "cpu_seconds": round(s.cpu_seconds, 3), "cpu_percent": s.cpu_percent,
            "rss_bytes": s.rss_bytes, "pids": s.pids, "nodes": list(s.nodes)}


def _next(base: str, params: dict, more: bool, cursor) -> str | None:
    if not more:
        return None
    q = {k: v for k, v in params.items() if k != "after"}
    q["after"] = str(cursor)
    return f"{base}?{urllib.parse.urlencode(q)}"


def job_metrics(m: JobMetrics, params: dict) -> dict:
    return {"job_id": m.job.id, "status": m.job.status.value, "latest": job_usage(m.latest),
            "max_rss_bytes": m.latest.max_rss_bytes if m.latest else None,
            "sample_interval_seconds": m.interval,
            "items": [job_sample(s) for _, s in m.samples],
            "next": _next(f"/jobs/{m.job.id}/metrics", params, m.more, m.samples[-1][0] if m.samples else 0)}


def node_metrics(m: NodeMetrics, params: dict) -> dict:
    return {"node_id": m.node.id, "latest": m.node.metrics or None,
            "items": [{k: r[k] for k in ("at", "cpu_percent", "memory_percent", "disk_percent", "load1", "jobs")}
                      for r in m.samples],
            "next": _next(f"/cluster/nodes/{m.node.id}/metrics", params, m.more,
                          m.samples[-1]["id"] if m.samples else 0)}


def usage_group(g: UsageGroup) -> dict:
    return {"key": g.key, "name": g.name, "jobs": g.jobs, "completed": g.completed, "failed": g.failed,
            "cancelled": g.cancelled, "failure_rate": None if g.failure_rate is None else round(g.failure_rate, 4),
            "cpu_hours": g.cpu_hours, "cpu_jobs": g.cpu_jobs, "wall_hours": g.wall_hours,
            "wall_jobs": g.wall_jobs, "wait_p50_seconds": g.wait_p50_seconds,
            "wait_p95_seconds": g.wait_p95_seconds, "waited_jobs": g.waited_jobs}


def share_usage(s: ShareUsage) -> dict:
    return {"node_id": s.node_id, "node": f"{s.node.address}:{s.node.port}" if s.node else None,
            "queue_id": s.queue_id, "queue": s.queue.name if s.queue else None,
            "measured_seconds": round(s.seconds, 1), "cpu_seconds": round(s.cpu_seconds, 3),
            "measured_share": None if s.measured_share is None else round(s.measured_share, 2),
            "target_share": None if s.target_share is None else round(s.target_share, 2)}


def usage(r: UsageReport) -> dict:
    return {"since": r.since, "until": r.until, "group_by": r.group_by, "owner": r.scope,
            "groups": [usage_group(g) for g in r.groups], "total": usage_group(r.total),
            "shares": [share_usage(s) for s in r.shares]}


def job_detail(d: JobDetail) -> dict:
    """GET /jobs/{id}: the job, its variables, where its output goes (resolved; an array's tasks' files, with
    %a where a task's index goes) and, with include=metrics, its latest live measurement."""
    out = job(d.job, d.tasks, d.metrics) if d.include_metrics else job(d.job, d.tasks)
    out["env"] = dict(d.job.spec.env)
    out["outputs"] = {"stdout": _shown_path(d.outputs.stdout), "stderr": _shown_path(d.outputs.stderr),
                      "join": d.outputs.joined}
    out["notify"] = notify(d.notify)
    return out


def notify(n) -> dict | None:
    """What the job's owner asked to be told (with the webhook's secret: only the owner and admins see a job)."""
    if n is None:
        return None
    return {"on": list(n.on), "email": n.email, "webhook": n.webhook, "secret": n.secret}


def delivery(d) -> dict:
    return {"channel": d.channel, "hook": d.hook, "address": d.address, "state": d.state, "attempts": d.attempts,
            "last_error": d.last_error, "next_attempt_at": d.next_at if d.state == "pending" else None,
            "delivered_at": d.delivered_at}


def history(h) -> dict:
    """GET /jobs/{id}/events: each change with its id in the event log and its deliveries."""
    items = []
    for e in h.events:
        out = event(e)
        eid = h.event_ids.get(e.id)
        out["event_id"] = eid
        out["deliveries"] = [delivery(d) for d in h.deliveries.get(eid, [])]
        items.append(out)
    return {"items": items}


def event_page(p, base: str, limit: int) -> dict:
    """GET /events: a page of the event log; ``next`` while more follow; ``last_id`` to resume from."""
    from ..events import event_doc
    nxt = f"{base}?{urllib.parse.urlencode({'after': p.items[-1].id, 'limit': limit})}" if p.more and p.items else None
    return {"items": [event_doc(e) for e in p.items], "next": nxt, "last_id": p.last_id}


def _shown_path(path: str | None) -> str | None:
    return path.replace(TASK_SLOT, "%a") if path is not None else None


def after(deps) -> dict | None:
    """A job's dependencies as submitted: {"ok": [12, "13.2"], ...} (None: none)."""
    if not deps:
        return None
    out: dict[str, list] = {}
    for d in deps:
        out.setdefault(d.kind, []).append(d.job_id if d.task is None else d.target)
    return out


def task(t: ArrayTask) -> dict:
    return {"id": t.ref, "job": t.job_id, "task": t.task, "status": t.status.value, "native_id": t.native_id,
            "exit_code": t.exit_code, "reason": t.reason, "cancel_requested": t.cancel_requested,
            "started_at": t.started_at, "finished_at": t.finished_at, "updated_at": t.updated_at}


def why(w: Why) -> dict:
    reasons = [{"code": r.code, "text": r.text, "detail": r.detail or r.text} for r in w.reasons]
    return {"job": w.job.id, "task": w.task.task if w.task else None,
            "status": (w.task or w.job).status.value, "where": w.where, "summary": why_summary(w),
            "reasons": reasons, "position": w.position, "ahead": w.ahead, "ahead_yours": list(w.ahead_yours),
            "scheduler_reason": w.scheduler_reason, "since": w.since, "tasks": w.tasks}


def why_summary(w: Why) -> str:
    """One line: what it is, where, and the first reason."""
    what = f"task {w.task.ref}" if w.task else f"job {w.job.id}"
    status = (w.task or w.job).status.value
    first = (w.reasons[0].detail or w.reasons[0].text) if w.reasons else None
    if w.where == "metasched":
        place = f"; {w.position} in its queue ({w.ahead} ahead)" if w.position is not None else ""
        return f"{what} waits in metasched's queue: {first or 'nothing holds it back'}{place}"
    if w.where == "scheduler":
        native = f": {w.scheduler_reason}" if w.scheduler_reason else " (no reason reported yet)"
        extra = f"; {first}" if first else ""
        return f"{what} waits in its scheduler's queue{native}{extra}"
    if w.where == "dispatching":
        return f"{what} is being submitted to its scheduler: {first or ''}".rstrip(": ")
    if w.where == "running":
        return f"{what} is RUNNING" + (f"; {first}" if first else "")
    return f"{what} ended {status}"


def dry_run(d: DryRun) -> dict:
    names = {q.id: q.name for q in d.mode.queues}
    return {"dry_run": True, "mode": mode(d.mode),
            "dispatch": [{"id": x["id"], "queue": x["queue_id"], "owner": x["owner"], "name": x["name"]}
                         for x in d.dispatch],
            "waiting": dict(d.waiting),
            "shares": [{"queue_id": qid, "name": names.get(qid, str(qid)), "share": round(v, 2)}
                       for qid, v in d.shares.items()],
            "nodes": [{"node_id": n.id, "address": f"{n.address}:{n.port}",
                       "shares": {names.get(q, str(q)): round(v, 2) for q, v in d.node_shares.get(n.id, {}).items()}}
                      for n in d.nodes],
            "current": {"dispatch": list(d.current_dispatch),
                        "shares": {names.get(q, str(q)): round(v, 2) for q, v in d.current_shares.items()}}}


def event(e: JobEvent) -> dict:
    return {"id": e.id, "at": e.at, "old_status": e.old_status, "new_status": e.new_status, "actor": e.actor,
            "reason": e.reason, "task": e.task}


def foreign_job(f: ForeignJob) -> dict:
    return {"id": f.id, "queue": f.queue_id, "native_id": f.native_id, "owner": f.owner, "name": f.name,
            "state": f.state, "native_queue": f.native_queue, "start_time": f.start_time,
            "first_seen": f.first_seen, "last_seen": f.last_seen}


def node(n: Node) -> dict:
    return {"id": n.id, "ip": n.address, "port": n.port, "master": n.is_master, "reachable": n.reachable,
            "last_seen": n.last_seen, "last_error": n.last_error, "load": list(n.load) if n.load else None,
            "ncpus": n.ncpus, "enforcement": n.enforcement or None, "metrics": n.metrics or None}


def queue(s: QueueSummary) -> dict:
    q = s.queue
    return {"id": q.id, "name": q.name, "type": q.type, "master_node_id": q.master_node_id,
            "weight": q.weight, "reachable": q.reachable, "last_error": q.last_error, "jobs": dict(s.jobs),
            # jobs submitted to the scheduler directly (not through us), as of its last status call
            "foreign_jobs": dict(s.foreign), "script": s.script}


def mode(m: Mode) -> dict:
    hp = m.high_priority
    return {"policy": m.policy, "high_priority": {"queue_id": hp.id, "name": hp.name} if hp else None,
            "schedulers": [{"queue_id": q.id, "name": q.name, "type": q.type, "weight": m.weights[q.id]}
                           for q in m.queues],
            "updated_at": m.updated_at, "updated_by": m.updated_by}


def cluster_event(e: ClusterEvent) -> dict:
    return {"id": e.id, "at": e.at, "actor": e.actor, "kind": e.kind, "detail": e.detail}


def status(s: Status, version: str) -> dict:
    lease = None if s.lease is None else {
        "holder": s.lease.holder, "epoch": s.lease.epoch, "acquired_at": s.lease.acquired_at,
        "renewed_at": s.lease.renewed_at, "expires_at": s.lease.expires_at}
    cycle = None if s.last_cycle is None else {
        "id": s.last_cycle.id, "holder": s.last_cycle.holder, "started_at": s.last_cycle.started_at,
        "duration_ms": s.last_cycle.duration_ms, "summary": s.last_cycle.summary, "errors": s.last_cycle.errors}
    return {"service": "metasched", "version": version, "user": s.caller.user, "admin": s.caller.is_admin,
            "authenticated_by": s.caller.via, "poller": {"lease": lease, "last_cycle": cycle}}


def token(t: Token, secret: str | None = None) -> dict:
    out = {"id": t.id, "user": t.user, "description": t.description, "created_by": t.created_by,
           "created_at": t.created_at, "expires_at": t.expires_at, "revoked_at": t.revoked_at,
           "last_used_at": t.last_used_at}
    if secret is not None:
        out["token"] = secret
    return out


def page(result: Page, item, base: str, params: dict, cursor=lambda x: x.id, cursor_param: str = "after") -> dict:
    """A listing page: its items serialized with ``item``, and a ``next`` link (the same query, after the
    last item; ``before`` it, newest first) exactly when more items follow."""
    nxt = None
    if result.more and result.items:
        q = {k: v for k, v in params.items() if k != cursor_param}
        q[cursor_param] = str(cursor(result.items[-1]))
        nxt = f"{base}?{urllib.parse.urlencode(q)}"
    return {"items": [item(x) for x in result.items], "next": nxt}


def history_cursor(j: Job) -> str:
    """The ``before`` cursor of a history page: the last job's end and id."""
    return f"{j.finished_at},{j.id}"
