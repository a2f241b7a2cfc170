"""``GET /metrics``: the service's state in the Prometheus text exposition format (version 0.0.4).

Who may read it: anyone who can reach it, without identity. Prometheus scrapers usually carry no
credentials, and the page holds counts only: jobs per queue and state, dispatches, node and queue
liveness, the poll cycle and the lease holder (host:pid). No user names, job names or paths. Node
addresses do appear (as ``GET /cluster/nodes`` shows them to every local user); the nginx site limits
``/metrics`` to the scraper's address (deploy/nginx/metasched.conf).

Every number is read in one read transaction, so the page is one consistent snapshot; each figure
is the same one the REST API shows (``GET /queues`` counts, ``GET /cluster/nodes`` reachability,
``GET /status`` lease and last cycle).
"""
from __future__ import annotations

import datetime as _dt
import math

from . import __version__
from .model import JobStatus
from .services import Services
from .web.routes import Route

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# -- exposition format ----------------------------------------------------------------------------

def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


class Family:
    """One metric: name, type, help, and its samples (labels, value)."""

    def __init__(self, name: str, kind: str, help_text: str):
        self.name, self.kind, self.help = name, kind, help_text
        self.samples: list[tuple[dict, float]] = []

    def add(self, value: float, **labels) -> "Family":
        self.samples.append((labels, value))
        return self

    def render(self) -> str:
        help_text = self.help.replace("\\", "\\\\").replace("\n", "\\n")
        lines = [f"# HELP {self.name} {help_text}", f"# TYPE {self.name} {self.kind}"]
        for labels, value in self.samples:
            lab = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{self.name}{{{lab}}} {_number(value)}" if lab else f"{self.name} {_number(value)}")
        return "\n".join(lines) + "\n"


def render(families: list[Family]) -> str:
    return "".join(f.render() for f in families)


# -- what we expose -------------------------------------------------------------------------------

def _epoch(iso: str | None) -> float | None:
    """Unix time of one of the service's UTC timestamps ('2026-11-28T00:11:14.123456Z')."""
    return _dt.datetime.fromisoformat(iso).timestamp() if iso else None


def collect(services: Services) -> list[Family]:
    """Build the metric families from one snapshot (Services.metrics)."""
    m = services.metrics()
    info = Family("metasched_info", "gauge", "The running metasched version.").add(1, version=__version__)
    jobs = Family("metasched_jobs", "gauge", "Jobs per queue and state (as GET /queues counts them).")
    disp = Family("metasched_dispatches_total", "counter",
                  "Jobs the poller handed to their scheduler (DISPATCHING to QUEUED, or to RUNNING for local).")
    refused = Family("metasched_dispatch_failures_total", "counter",
                     "Dispatches that failed for good: refused by the scheduler, or given up after "
                     "poller.max_attempts attempts that did not reach it.")
    queue_up = Family("metasched_queue_up", "gauge",
                      "1 when the scheduler's last batched status call worked, 0 when it failed; "
                      "absent before the first check.")
    for q in m.queues:
        per_state = m.jobs.get(q.id, {})
        for s in JobStatus:
            jobs.add(per_state.get(s.value, 0), queue=q.name, state=s.value)
        d, r = m.dispatches.get(q.id, (0, 0))
        disp.add(d, queue=q.name)
        refused.add(r, queue=q.name)
        if q.reachable is not None:
            queue_up.add(int(q.reachable), queue=q.name)

    node_up = Family("metasched_node_up", "gauge",
                     "1 when the node answered the last poll cycle, 0 when it did not; absent before the "
                     "first check.")
    for n in m.nodes:
        if n.reachable is not None:
            node_up.add(int(n.reachable), node=f"{n.address}:{n.port}")

    out = [info, jobs, disp, refused, queue_up, node_up]
    out += _usage_families(m)

    lease_info = Family("metasched_poller_lease_info", "gauge",
                        "The poller lease: the holder (host:pid:thread) is the one worker that acts.")
    lease_exp = Family("metasched_poller_lease_expires_seconds", "gauge",
                       "When the poller lease expires (Unix time); renewed while its holder lives.")
    if m.lease:
        lease_info.add(1, holder=m.lease.holder)
        lease_exp.add(_epoch(m.lease.expires_at))
    out += [lease_info, lease_exp]

    last = Family("metasched_poll_cycle_duration_seconds", "gauge", "Duration of the last poll cycle.")
    started = Family("metasched_poll_cycle_last_start_seconds", "gauge",
                     "When the last recorded poll cycle started (Unix time).")
    errors = Family("metasched_poll_cycle_errors", "gauge",
                    "Node and scheduler errors in the last poll cycle (details: GET /status).")
    worst = Family("metasched_poll_cycle_duration_max_seconds", "gauge",
                   "Longest duration among the recorded poll cycles (retention.poll_cycles).")
    recorded = Family("metasched_poll_cycles_recorded", "gauge", "Poll cycles kept in the database.")
    if m.last_cycle:
        last.add(m.last_cycle.duration_ms / 1000.0)
        started.add(_epoch(m.last_cycle.started_at))
        errors.add(len(m.last_cycle.errors or {}))
    if m.cycles["n"]:
        worst.add(m.cycles["max_ms"] / 1000.0)
    recorded.add(m.cycles["n"])
    out += [last, started, errors, worst, recorded]

    delivered = Family("metasched_event_deliveries_total", "counter",
                       "Events delivered to a webhook or by mail (each once, however many attempts it took).")
    failed = Family("metasched_event_delivery_failures_total", "counter",
                    "Deliveries given up for good (retried for events.retry_for seconds, or a refused destination).")
    attempts = Family("metasched_event_delivery_attempt_failures_total", "counter",
                      "Delivery attempts that failed (the receiver answered an error, or did not answer in time).")
    pending = Family("metasched_event_deliveries_pending", "gauge",
                     "Deliveries waiting to be sent or retried now.")
    for channel in ("webhook", "email"):
        c = m.deliveries.get(channel, {})
        delivered.add(c.get("delivered", 0), channel=channel)
        failed.add(c.get("failed", 0), channel=channel)
        attempts.add(c.get("attempt_failures", 0), channel=channel)
        pending.add(c.get("pending", 0), channel=channel)
    out += [delivered, failed, attempts, pending]
    return out


def _usage_families(m) -> list[Family]:
    """What the jobs used (issue 15): CPU seconds per scheduler (its group's, every node, as the node agents
    measure it for enforcement: a counter since the database was made; a step the poller did not see, e.g.
    across a takeover, is not counted rather than guessed) and each node's latest utilisation (absent until
    its agent measured it: never a made-up zero)."""
    cpu = Family("metasched_scheduler_cpu_seconds_total", "counter",
                 "CPU time used by each scheduler's jobs on all nodes, as the node agents measure its group.")
    for q in m.queues:
        cpu.add(float((m.queue_cpu or {}).get(q.id, 0.0)), queue=q.name)
    node_cpu = Family("metasched_node_cpu_ratio", "gauge", "Share of the node's CPU time that was busy over the "
                                                          "last poll cycle (0..1).")
    node_mem = Family("metasched_node_memory_ratio", "gauge", "Share of the node's memory in use (1 - available / "
                                                             "total).")
    node_disk = Family("metasched_node_disk_ratio", "gauge", "Share of each filesystem the node's jobs work in "
                                                            "that is used (as df counts it).")
    node_load = Family("metasched_node_load1", "gauge", "The node's 1-minute load average.")
    node_jobs = Family("metasched_node_jobs", "gauge", "Our jobs whose processes the node's agent saw running.")
    for n in m.nodes:
        fig = n.metrics or {}
        name = f"{n.address}:{n.port}"
        if fig.get("cpu_percent") is not None:
            node_cpu.add(fig["cpu_percent"] / 100.0, node=name)
        if fig.get("memory_percent") is not None:
            node_mem.add(fig["memory_percent"] / 100.0, node=name)
        for d in fig.get("disks") or []:
            if d.get("used_percent") is not None:
                node_disk.add(d["used_percent"] / 100.0, node=name, mount=d.get("mount") or "")
        if fig.get("load"):
            node_load.add(float(fig["load"][0]), node=name)
        if fig.get("jobs") is not None:
            node_jobs.add(int(fig["jobs"]), node=name)
    return [cpu, node_cpu, node_mem, node_disk, node_load, node_jobs]


class MetricsResource:
    public = True     # counts only, no user names: Prometheus scrapes it without an identity
    def __init__(self, services: Services):
        self.svc = services

    def on_get(self, req, resp):
        resp.content_type = CONTENT_TYPE
        resp.text = render(collect(self.svc))


# The routes this module serves: runner.make_app passes them to web.app.create_app beside the API's.
ROUTES = (Route("/metrics", MetricsResource, {"get": {
    "summary": "Prometheus metrics (text format 0.0.4); readable without identity: counts only",
    "security": [],
    "responses": {"200": {"description": "Prometheus text exposition format",
                          "content": {"text/plain": {"schema": {"type": "string"}}}}},
}}),)


__all__ = ["ROUTES", "collect", "render", "Family", "CONTENT_TYPE"]
