"""Measure: what the node agents saw the jobs and the nodes use this cycle (issue 15).

The agents already scan every job's process tree each cycle to enforce the shares; with ``metrics.enabled``
the same answer carries each job's CPU time and resident memory and the node's counters. :func:`read` turns
one cycle's answers into plain values (pure, but for the :class:`Meters` it carries between cycles);
:func:`write` stores them in the cycle's fenced transaction:

- each running job's latest measurement (``job_usage``: CPU time so far, memory now, the peak, the nodes),
  and a sample over time at most every ``metrics.job_sample_interval`` seconds, downsampled beyond
  ``metrics.max_samples_per_job`` (every other sample goes, the interval doubles);
- each node's latest figures (cpu %, memory %, disk % of the job filesystems, load) and a sample every
  ``metrics.node_sample_interval``;
- per node and scheduler, the CPU its group used next to the share the policy targeted (the enforcement
  measurements), summed per ``metrics.share_bucket_seconds``; per scheduler, a CPU-seconds counter.

Every write happens in the cycle's fenced transaction (the one that records the observation), in a savepoint.
Rates (a job's cpu %, the node's cpu %) and spans come from two answers of the same node, on its boot clock
(/proc/uptime): a wall-clock step changes none of them, and a reboot (the clock went back) starts afresh.
What the previous lease holder measured is not carried over: the first cycle after a takeover has no rates
and adds no CPU to the counters (nothing is counted twice). Wall-clock times only stamp the rows.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

from .. import enforcement
from ..db.core import epoch_to_time
from ..db.repository import Repository
from ..model import Job, JobStatus, Queue
from .values import CycleReport, Tick

log = logging.getLogger("metasched.engine")

MEASURED_STATES = (JobStatus.QUEUED, JobStatus.RUNNING)   # a job the agents may find running (Grid Engine 't')


@dataclass
class JobReading:
    nodes: tuple[str, ...]
    cpu_seconds: float
    cpu_percent: float | None
    rss_bytes: int
    pids: int


@dataclass
class Reading:
    """One cycle's measurements, as values."""
    jobs: dict[int, JobReading] = field(default_factory=dict)            # job id ->
    nodes: dict[int, dict] = field(default_factory=dict)                 # node id -> its figures
    shares: list[tuple[int, int, float, float, float]] = field(default_factory=list)
    #       (node id, queue id, seconds, cpu seconds, target share x seconds)
    queue_cpu: dict[int, float] = field(default_factory=dict)            # queue id -> cpu seconds this cycle
    unmatched: int = 0                                                   # job figures of no job of ours


@dataclass
class Meters:
    """What this lease holder remembers between cycles (in memory: a new holder starts afresh)."""
    job_prev: dict[tuple[int, int], tuple[float, int]] = field(default_factory=dict)   # (node, job) -> (uptime, usec)
    node_prev: dict[int, tuple[float, list[int]]] = field(default_factory=dict)       # node -> (uptime, cpu ticks)
    group_prev: dict[int, tuple[float, dict[str, int]]] = field(default_factory=dict)  # node -> (uptime, usage)
    job_sampled: dict[int, float] = field(default_factory=dict)      # job id -> when its last sample was stored
    node_sampled: dict[int, float] = field(default_factory=dict)     # node id -> the same (monotonic)
    strides: dict[int, list[int]] = field(default_factory=dict)      # job id -> [stride, samples] as stored


def _rate(prev: tuple[float, int] | None, uptime: float | None, usec: int) -> float | None:
    """CPU percent (100 = one core) between two readings of one node's boot clock; None when unknown."""
    if prev is None or uptime is None:
        return None
    dt, du = uptime - prev[0], usec - prev[1]
    if dt <= 0 or du < 0:
        return None       # a reboot, or a process of the tree exited unreaped: this step is unknown
    return round(100.0 * du / (dt * 1e6), 2)


def read(node_obs: list, queues: list[Queue], jobs: list[Job], shares: dict[int, float], meters: Meters,
         iso: str) -> Reading:
    """The cycle's readings from the agents' answers (``node_obs``: NodeObservation), for the jobs of this
    cycle's working set; ``shares``: the shares the agents were asked to apply this cycle."""
    out = Reading()
    by_group = {enforcement.group_name(q): q for q in queues}
    ours = {(j.queue_id, j.scheduler_job_id): j for j in jobs
            if j.status in MEASURED_STATES and j.scheduler_job_id}
    per_job: dict[int, list[tuple[str, int, int, int, float | None]]] = {}
    machines: set[str] = set()
    for no in node_obs:
        node, agent = no.node, no.agent
        if not agent.ok:
            continue
        seen = 0
        # nodes that are namespaces of one machine (one boot, one PID namespace) see the same processes:
        # their jobs and CPU are counted once, by the first of them
        ident = (agent.node or {}).get("procs_id")
        again = ident is not None and ident in machines
        if ident is not None:
            machines.add(ident)
        for group, figures in ({} if again else agent.jobs).items():
            q = by_group.get(group)
            if q is None:
                continue
            for native, f in figures.items():
                job = ours.get((q.id, native))
                if job is None:
                    out.unmatched += 1
                    continue
                seen += 1
                key = (node.id, job.id)
                pct = _rate(meters.job_prev.get(key), agent.uptime, f["cpu_usec"])
                if agent.uptime is not None:
                    meters.job_prev[key] = (agent.uptime, f["cpu_usec"])
                per_job.setdefault(job.id, []).append((node.address, f["cpu_usec"], f["rss_bytes"], f["pids"], pct))
        if agent.node is not None:
            out.nodes[node.id] = _node_figures(node, agent, meters, iso, seen)
        _shares(out, node.id, agent, by_group, shares, queues, meters, count=not again)
    for jid, parts in per_job.items():
        pcts = [p[4] for p in parts]
        out.jobs[jid] = JobReading(
            nodes=tuple(sorted({p[0] for p in parts})), cpu_seconds=sum(p[1] for p in parts) / 1e6,
            cpu_percent=round(sum(pcts), 2) if all(p is not None for p in pcts) else None,
            rss_bytes=sum(p[2] for p in parts), pids=sum(p[3] for p in parts))
    active = {j.id for j in jobs if j.status in MEASURED_STATES}
    for key in [k for k in meters.job_prev if k[1] not in active]:
        del meters.job_prev[key]
    for jid in [k for k in meters.job_sampled if k not in active]:
        del meters.job_sampled[jid]
    for jid in [k for k in meters.strides if k not in active]:
        del meters.strides[jid]
    return out


def _pct(part, whole) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def _node_figures(node, agent, meters: Meters, iso: str, jobs_seen: int) -> dict:
    n = agent.node
    cpu_pct = None
    ticks = n.get("cpu_ticks")
    if isinstance(ticks, list) and len(ticks) == 2 and all(isinstance(t, int) for t in ticks):
        prev = meters.node_prev.get(node.id)
        if prev is not None and agent.uptime is not None and agent.uptime > prev[0]:
            total, idle = ticks[0] - prev[1][0], ticks[1] - prev[1][1]
            if total > 0 and 0 <= idle <= total:
                cpu_pct = round(100.0 * (total - idle) / total, 2)
        if agent.uptime is not None:
            meters.node_prev[node.id] = (agent.uptime, ticks)
    mem = n.get("memory") if isinstance(n.get("memory"), dict) else {}
    total, avail = mem.get("total"), mem.get("available")
    memory_pct = _pct(total - avail, total) if isinstance(total, int) and isinstance(avail, int) else None
    disks = []
    for d in n.get("disks") or []:
        try:
            used, free = int(d["used"]), int(d["avail"])
            disks.append({"mount": d.get("mount"), "size_bytes": int(d["size"]), "used_bytes": used,
                          "available_bytes": free, "used_percent": _pct(used, used + free)})
        except (KeyError, TypeError, ValueError):
            continue
    used = [d["used_percent"] for d in disks if d["used_percent"] is not None]
    return {"at": iso, "cpu_percent": cpu_pct, "memory_percent": memory_pct,
            "memory_total_bytes": total if isinstance(total, int) else None,
            "memory_available_bytes": avail if isinstance(avail, int) else None,
            "disk_percent": max(used) if used else None, "disks": disks,
            "load": list(agent.load) if agent.load else None, "ncpus": agent.ncpus, "jobs": jobs_seen}


def _shares(out: Reading, node_id: int, agent, by_group: dict, shares: dict[int, float], queues: list[Queue],
            meters: Meters, count: bool = True) -> None:
    """This node's step of the enforcement measurements: each scheduler group's CPU since the previous answer,
    the span, and the share the policy targeted (the one the agents applied)."""
    if agent.uptime is None:
        return
    prev = meters.group_prev.get(node_id)
    meters.group_prev[node_id] = (agent.uptime, dict(agent.usage_usec))
    if prev is None or agent.uptime <= prev[0]:
        return
    dt = agent.uptime - prev[0]
    default = 100.0 / max(1, len(queues))
    for group, usec in agent.usage_usec.items():
        q = by_group.get(group)
        if q is None or group not in prev[1]:
            continue
        cpu = max(0, usec - prev[1][group]) / 1e6     # a group recreated (reboot) loses one step, never more
        target = shares.get(q.id, default)
        out.shares.append((node_id, q.id, dt, cpu, target * dt))
        if count:
            out.queue_cpu[q.id] = out.queue_cpu.get(q.id, 0.0) + cpu


def bucket_of(wall: float, seconds: float) -> str:
    return epoch_to_time(math.floor(wall / seconds) * seconds)


def write(repo: Repository, reading: Reading, tick: Tick, config, meters: Meters) -> int:
    """Store one cycle's readings (the caller holds the fenced transaction); how many samples it stored."""
    m, ret = config.metrics, config.retention
    unknown = [jid for jid in reading.jobs if jid not in meters.strides]
    if unknown:        # a new holder (or new jobs): their strides and sample counts as stored
        known = repo.list_job_usage(unknown)
        for jid in unknown:
            u = known.get(jid)
            meters.strides[jid] = [u.stride, u.samples] if u is not None else [1, 0]
    usages, samples, full = [], [], []
    for jid, r in reading.jobs.items():
        stride = meters.strides[jid]
        last = meters.job_sampled.get(jid)
        due = last is None or tick.mono - last >= m.job_sample_interval * stride[0]
        row = dict(job_id=jid, at=tick.iso, nodes=r.nodes, cpu_seconds=r.cpu_seconds, cpu_percent=r.cpu_percent,
                   rss_bytes=r.rss_bytes, pids=r.pids)
        usages.append(dict(row, sampled=int(due)))
        if due:
            meters.job_sampled[jid] = tick.mono
            samples.append(row)
            stride[1] += 1
            if stride[1] >= m.max_samples_per_job:
                full.append(jid)
    repo.upsert_job_usages(usages)
    repo.insert_job_samples(samples)
    for jid in full:               # downsampling: every other sample goes, the interval doubles
        repo.thin_job_samples(jid)
        meters.strides.pop(jid, None)         # re-read next cycle, as stored
    stored = len(samples)
    for nid, fig in reading.nodes.items():
        repo.set_node_metrics(id=nid, metrics=fig)
        last = meters.node_sampled.get(nid)
        if last is None or tick.mono - last >= m.node_sample_interval:
            meters.node_sampled[nid] = tick.mono
            repo.insert_node_sample(node_id=nid, at=tick.iso, cpu_percent=fig["cpu_percent"],
                                    memory_percent=fig["memory_percent"], disk_percent=fig["disk_percent"],
                                    load1=fig["load"][0] if fig["load"] else None, jobs=fig["jobs"])
    bucket = bucket_of(tick.wall, m.share_bucket_seconds)
    repo.add_share_samples([dict(node_id=node_id, queue_id=queue_id, bucket=bucket, seconds=seconds, cpu_seconds=cpu,
                                 target_seconds=target) for node_id, queue_id, seconds, cpu, target in reading.shares])
    for queue_id, cpu in reading.queue_cpu.items():
        if cpu > 0:
            repo.add_queue_cpu(queue_id=queue_id, cpu_seconds=cpu)
    if ret.metrics_days:
        before = epoch_to_time(tick.wall - ret.metrics_days * 86400)
        repo.prune_job_samples(before=before, limit=ret.batch)
        repo.prune_node_samples(before=before, limit=ret.batch)
        repo.prune_share_samples(before=before, limit=ret.batch)
    return stored


def record(repo: Repository, meters: Meters, node_obs: list, queues: list[Queue], jobs: list[Job],
           shares: dict[int, float], tick: Tick, config, report: CycleReport) -> None:
    """The engine's one call per cycle, inside the fenced transaction that records the observation (one
    commit less: with synchronous=FULL a commit costs this machine 2.8 ms, 4 % of a cycle with 200 jobs). In a
    savepoint of its own: whatever goes wrong here costs this cycle its measurements (one error line), never
    the rest of what the cycle records."""
    if not config.metrics.enabled:
        return
    t0 = time.monotonic()
    try:
        reading = read(node_obs, queues, jobs, shares, meters, tick.iso)
        dropped = sum(no.agent.dropped for no in node_obs if no.agent.ok)
        if dropped:
            report.error("metrics", f"{dropped} job figures of the node agents were not readable (left out)")
        with repo.db.savepoint("measure"):
            report.summary["samples"] = write(repo, reading, tick, config, meters)
        report.summary["measured_jobs"] = len(reading.jobs)
    except Exception as exc:
        log.exception("recording the measurements failed")
        report.error("metrics", f"measurements not recorded this cycle: {type(exc).__name__}: {exc}")
    report.summary["measure_ms"] = round((time.monotonic() - t0) * 1000, 2)
