"""The HTTP shape of every resource, in one place: model and service values in, JSON-ready dicts out.

Each function here is the one serialization of its resource (the CLI, the OpenAPI schemas in schemas.py
and the tests all read this shape); a listing's page and its ``next`` link are built by :func:`page`.
"""
from __future__ import annotations

import urllib.parse

from ..backends.base import TASK_SLOT, tag
from ..model import ArraySpec, ArrayTask, ClusterEvent, ForeignJob, Job, JobEvent, Node, Token
from ..services import DryRun, JobDetail, Mode, Page, QueueSummary, Status, Why


def job(j: Job, tasks: dict[str, int] | None = None) -> dict:
    """A job; ``tasks``: an array's tasks per state (services.Shown gives both: ``job(*shown)``)."""
    spec = j.spec
    links = {"self": f"/jobs/{j.id}", "events": f"/jobs/{j.id}/events", "output": f"/jobs/{j.id}/output",
             "why": f"/jobs/{j.id}/why"}
    array = None
    if j.array_spec:
        a = ArraySpec.parse(j.array_spec, internal=True)
        array = {"spec": str(ArraySpec(a.first, a.last, a.step, a.limit)), "count": a.count,
                 "limit": a.limit, "tasks": dict(tasks or {})}
        links["tasks"] = f"/jobs/{j.id}/tasks"
    return {
        "id": j.id, "name": j.name, "native_name": tag(j), "queue": j.queue_id, "owner": j.owner,
        "status": j.status.value,
        "path": j.path, "options": list(j.options), "pwd": j.pwd, "scheduler_job_id": j.scheduler_job_id,
        "exit_code": j.exit_code, "reason": j.reason, "cancel_requested": j.cancel_requested,
        "created_at": j.created_at, "submitted_at": j.submitted_at, "started_at": j.started_at,
        "finished_at": j.finished_at, "updated_at": j.updated_at,
        "links": links,
        # -- what the job asks for (issue 14); the variables' values only in job_detail --
        "resources": spec.resources.asked(), "native": list(spec.native), "env_names": [k for k, _ in spec.env],
        "export": spec.export if not isinstance(spec.export, tuple) else list(spec.export),
        "stdout": spec.stdout, "stderr": spec.stderr, "join": spec.join,
        # -- workflows (issue 16) --
        "array": array, "after": after(j.depends_on),
    }


def job_detail(d: JobDetail) -> dict:
    """GET /jobs/{id}: the job, its variables, and where its output goes (resolved; an array's tasks' files, with
    %a where a task's index goes)."""
    out = job(d.job, d.tasks)
    out["env"] = dict(d.job.spec.env)
    out["outputs"] = {"stdout": _shown_path(d.outputs.stdout), "stderr": _shown_path(d.outputs.stderr),
                      "join": d.outputs.joined}
    return out


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
            "ncpus": n.ncpus, "enforcement": n.enforcement or None}


def queue(s: QueueSummary) -> dict:
    q = s.queue
    return {"id": q.id, "name": q.name, "type": q.type.value, "master_node_id": q.master_node_id,
            "weight": q.weight, "reachable": q.reachable, "last_error": q.last_error, "jobs": dict(s.jobs),
            # jobs submitted to the scheduler directly (not through us), as of its last status call
            "foreign_jobs": dict(s.foreign), "script": s.script}


def mode(m: Mode) -> dict:
    hp = m.high_priority
    return {"policy": m.policy, "high_priority": {"queue_id": hp.id, "name": hp.name} if hp else None,
            "schedulers": [{"queue_id": q.id, "name": q.name, "type": q.type.value, "weight": m.weights[q.id]}
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
