"""The HTTP shape of every resource, in one place: model and service values in, JSON-ready dicts out.

Each function here is the one serialization of its resource (the CLI, the OpenAPI schemas in schemas.py
and the tests all read this shape); a listing's page and its ``next`` link are built by :func:`page`.
"""
from __future__ import annotations

import urllib.parse

from ..backends.base import tag
from ..model import ClusterEvent, ForeignJob, Job, JobEvent, Node, Token
from ..services import JobDetail, Mode, Page, QueueSummary, Status


def job(j: Job) -> dict:
    spec = j.spec
    return {
        "id": j.id, "name": j.name, "native_name": tag(j), "queue": j.queue_id, "owner": j.owner,
        "status": j.status.value,
        "path": j.path, "options": list(j.options), "pwd": j.pwd, "scheduler_job_id": j.scheduler_job_id,
        "exit_code": j.exit_code, "reason": j.reason, "cancel_requested": j.cancel_requested,
        "created_at": j.created_at, "submitted_at": j.submitted_at, "started_at": j.started_at,
        "finished_at": j.finished_at, "updated_at": j.updated_at,
        "links": {"self": f"/jobs/{j.id}", "events": f"/jobs/{j.id}/events", "output": f"/jobs/{j.id}/output"},
        # -- what the job asks for (issue 14); the variables' values only in job_detail --
        "resources": spec.resources.asked(), "native": list(spec.native), "env_names": [k for k, _ in spec.env],
        "export": spec.export if not isinstance(spec.export, tuple) else list(spec.export),
        "stdout": spec.stdout, "stderr": spec.stderr, "join": spec.join,
    }


def job_detail(d: JobDetail) -> dict:
    """GET /jobs/{id}: the job, its variables, and where its output goes (resolved)."""
    out = job(d.job)
    out["env"] = dict(d.job.spec.env)
    out["outputs"] = {"stdout": d.outputs.stdout, "stderr": d.outputs.stderr, "join": d.outputs.joined}
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


def event(e: JobEvent) -> dict:
    return {"id": e.id, "at": e.at, "old_status": e.old_status, "new_status": e.new_status, "actor": e.actor,
            "reason": e.reason}


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
