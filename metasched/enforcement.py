"""Enforcement of the policy's CPU shares on the nodes, through the node agent (metasched/node_agent.py).

This module is pure: it builds the agent's request for one node, parses its answer, and turns the
cumulative CPU usage the agent reports into measured shares over the last minute. The engine runs the
agent in the same single round trip per node that also serves as the liveness probe.
"""
from __future__ import annotations

import json
import math
import re
import shlex
from collections import deque
from dataclasses import dataclass, field
from importlib import resources

from .backends.base import YARN_CONTAINERS, ProcessMatcher
from .model import Queue

WINDOW_SECONDS = 60.0
FEEDBACK_WINDOW = 5.0      # seconds of accounting the feedback step measures the split over


def agent_program() -> str:
    return resources.files("metasched").joinpath("node_agent.py").read_text(encoding="utf-8")


def group_name(queue: Queue) -> str:
    """A cgroup name for the scheduler: stable (its id) and readable (its type and name)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"q{queue.id}-{queue.type}-{queue.name}")[:64]


def match_for(matcher: ProcessMatcher, pgids: list[int]) -> dict:
    """The agent's description of one scheduler's job trees: Grid Engine and Slurm by their per-job
    daemons (descendants of sge_shepherd / slurmstepd), local jobs by process group, YARN containers
    by the agent's own rule (children of the NodeManager or of container-executor, never the
    NodeManager itself: the backend's launch-script regex describes the same trees), the others by their
    matcher's command-line rules (local wrappers; Spark drivers and executors, never its daemons)."""
    m: dict = {"roots_by_comm": list(matcher.roots_by_comm), "exclude_comm": list(matcher.exclude_comm)}
    if pgids:
        m["pgids"] = sorted({p for p in pgids if p > 1})
    if matcher.job_ids == YARN_CONTAINERS:
        m["yarn_containers"] = True
    elif matcher.trees_by_args_regex:      # the agent's own YARN rule describes the same trees as its regex
        m["trees_by_args"] = matcher.trees_by_args_regex
        if matcher.exclude_args_regex:
            m["exclude_args"] = matcher.exclude_args_regex
        if matcher.include_process_group:
            m["process_group"] = True
    if matcher.job_ids:
        m["job_ids"] = matcher.job_ids
    return m


def build_request(groups: list[tuple[Queue, float, ProcessMatcher, list[int]]], *, method: str,
                  parent: str, measure: bool = False, disk_paths: tuple[str, ...] = (),
                  caps: dict[str, float] | None = None) -> dict:
    """groups: (queue, target percent, its backend's matcher, process groups of its local jobs); ``caps``: group
    name -> the cores its CPU is capped at (feedback_caps; a group without one has its cap lifted). With
    ``measure``, the agent also reports each job's CPU time and memory and the node's figures (issue 15);
    with method "none" it still finds the trees then, to measure them, and moves nothing."""
    req = {
        "version": 1, "parent": parent, "mechanism": method,
        "groups": [] if method == "none" and not measure else [
            {"name": group_name(q), "weight_percent": round(max(share, 0.0), 3), "match": match_for(m, pgids)}
            for q, share, m, pgids in groups],
    }
    for g in req["groups"]:
        if caps and g["name"] in caps:
            g["cap_cores"] = caps[g["name"]]
    if measure:
        req["measure"] = True
        if disk_paths:
            req["disk_paths"] = list(disk_paths)
    return req


def command(request: dict, helper: str | None) -> str:
    """One agent call as one command line: the installed helper through sudo, or the agent inline."""
    return shlex.join(_agent_argv(helper) + [payload(request)])


def serve_command(helper: str | None) -> str:
    """The agent kept running (--serve): one request line in, one answer line out, every cycle."""
    return shlex.join(_agent_argv(helper) + ["--serve"])


def payload(request: dict) -> str:
    return json.dumps(request, separators=(",", ":"))


def _agent_argv(helper: str | None) -> list[str]:
    if helper:
        return ["sudo", "-n", helper]
    return ["python3", "-I", "-S", "-c", agent_program()]


@dataclass
class AgentReport:
    ok: bool
    error: str | None = None
    load: tuple[float, float, float] | None = None
    ncpus: int | None = None
    mechanism: str | None = None
    note: str | None = None
    usage_usec: dict[str, int] = field(default_factory=dict)   # group name -> cumulative CPU usage
    groups: dict[str, dict] = field(default_factory=dict)      # group name -> what the agent applied there
    errors: list[str] = field(default_factory=list)
    time: float | None = None
    # issue 15: the node's boot clock, each job's figures (group -> native id -> cpu_usec, rss_bytes, pids) and
    # the node's counters (cpu_ticks, memory, disks, clk_tck), when the request asked to measure
    uptime: float | None = None
    jobs: dict[str, dict[str, dict]] = field(default_factory=dict)
    node: dict | None = None
    dropped: int = 0          # job entries of the answer that were not what we expect (left out, counted)


def parse_answer(rc: int | None, stdout: str, stderr: str) -> AgentReport:
    line = next((ln for ln in reversed(stdout.strip().splitlines()) if ln.startswith("{")), "")
    try:
        d = json.loads(line)
    except json.JSONDecodeError:
        msg = (stderr.strip().splitlines() or [f"exit status {rc}, no answer"])[-1]
        return AgentReport(False, f"node agent: {msg[:300]}")
    if not d.get("ok"):
        return AgentReport(False, "node agent: " + "; ".join(d.get("errors") or ["failed"])[:300])
    load = d.get("load")
    groups = {name: g for name, g in (d.get("groups") or {}).items() if isinstance(g, dict)}
    jobs, dropped = _job_figures(groups)
    uptime = d.get("uptime")
    return AgentReport(
        True, load=tuple(load) if load and len(load) == 3 else None, ncpus=d.get("ncpus"),
        mechanism=d.get("mechanism"), note=d.get("mechanism_note") or None,
        usage_usec={name: int(g.get("usage_usec") or 0) for name, g in groups.items()},
        groups=groups, errors=list(d.get("errors") or []), time=d.get("time"),
        uptime=float(uptime) if isinstance(uptime, (int, float)) and not isinstance(uptime, bool) else None,
        jobs=jobs, node=d["node"] if isinstance(d.get("node"), dict) else None, dropped=dropped)


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _job_figures(groups: dict) -> tuple[dict, int]:
    """Each group's per-job figures (the agent sends [cpu_usec, rss_bytes, pids] per native id), entry by
    entry: one the agent got wrong (a native id that is not a short plain word, a figure that is not a count)
    is left out and counted, the others are kept."""
    out, dropped = {}, 0
    for name, g in groups.items():
        jobs = g.get("jobs")
        if not isinstance(jobs, dict):
            continue
        keep = {}
        for native, fig in jobs.items():
            if (isinstance(native, str) and 0 < len(native) <= 64 and native.isascii()
                    and native.replace("_", "").isalnum() and isinstance(fig, list) and len(fig) == 3
                    and all(_count(v) for v in fig)):
                keep[native] = {"cpu_usec": fig[0], "rss_bytes": fig[1], "pids": fig[2]}
            else:
                dropped += 1
        out[name] = keep
    return out, dropped


class UsageWindow:
    """Cumulative usage samples per node; measured shares over the last WINDOW_SECONDS."""

    def __init__(self, window: float = WINDOW_SECONDS):
        self.window = window
        self.samples: dict[int, deque] = {}

    def add(self, node_id: int, t: float, usage: dict[str, int]) -> None:
        q = self.samples.setdefault(node_id, deque())
        q.append((t, dict(usage)))
        while len(q) > 2 and q[1][0] <= t - self.window:
            q.popleft()

    def deltas(self, node_id: int) -> tuple[float, dict[str, int]]:
        """CPU microseconds used per group over the window, summed step by step: a counter that went down
        (the group was recreated after a reboot, or a process of a /proc-summed group exited) loses that
        one step, not the whole window."""
        q = self.samples.get(node_id)
        if not q or len(q) < 2:
            return 0.0, {}
        total: dict[str, int] = {g: 0 for g in q[-1][1]}
        prev = q[0][1]
        for _, u in list(q)[1:]:
            for g, v in u.items():
                if g in total:
                    total[g] += max(0, v - prev.get(g, v))
            prev = u
        return q[-1][0] - q[0][0], total

    def recent(self, node_id: int, seconds: float = FEEDBACK_WINDOW) -> tuple[float, dict[str, int]]:
        """(seconds covered, CPU microseconds per group) over the most recent samples spanning at least
        ``seconds`` (or all there are): what the feedback step measures. One cycle of fork-heavy jobs is too
        noisy a sample (measured here: 48 % to 80 % from one second to the next for a steady 70/30 split)."""
        q = self.samples.get(node_id)
        if not q or len(q) < 2:
            return 0.0, {}
        items = list(q)
        start = len(items) - 2
        while start > 0 and items[-1][0] - items[start][0] < seconds:
            start -= 1
        total: dict[str, int] = {g: 0 for g in items[-1][1]}
        for (_, u0), (_, u1) in zip(items[start:], items[start + 1:]):
            for g, v in u1.items():
                if g in total:
                    total[g] += max(0, v - u0.get(g, v))
        return items[-1][0] - items[start][0], total

    def last_step(self, node_id: int) -> dict[str, int]:
        q = self.samples.get(node_id)
        if not q or len(q) < 2:
            return {}
        u0, u1 = q[-2][1], q[-1][1]
        return {g: max(0, u1.get(g, 0) - u0.get(g, 0)) for g in u1}

    def measured_shares(self, node_id: int) -> dict[str, float]:
        _, d = self.deltas(node_id)
        total = sum(d.values())
        return {g: 100.0 * v / total for g, v in d.items()} if total else {}


# -- feedback: weights corrected while the measured split stays off the target ---------------------
# The kernel splits CPU between groups by their weights exactly only when every group's runnable tasks are spread
# over the CPUs alike: a group's cpu.shares / cpu.weight is divided among the CPUs in proportion to its load on
# each (calc_group_shares). Jobs that fork a command per loop iteration are placed anew at every fork and exec,
# so their groups' loads are spread unevenly, and with other load on the node the busier-weighted group gets
# more than its share (70/30 measured 78/22 to 87/13 on 2 cores). Each cycle, the written weights are
# corrected a bounded step towards the split the policy asks for, from the groups' own CPU accounting.

@dataclass(frozen=True)
class Feedback:
    """gain: log-weight correction per unit of log(target / measured); step: at most this much change of a
    group's log-weight per cycle (0.15: about 16 %); bound: a written weight stays within 1/bound..bound times
    its target; deadband: points of error left alone; min_cores: a group is busy when it used at least this
    much CPU over the measured seconds and has processes."""
    gain: float = 0.3
    step: float = 0.15
    bound: float = 4.0
    deadband: float = 1.0
    min_cores: float = 0.05
    caps: bool = True           # enforcement.feedback_caps: see feedback_caps
    cap_after: int = 5          # cycles a group stays over its target with its weight at the bound before a cap
    cap_loss: float = 0.5       # caps are lifted (and not tried again) when the busy groups lost this part of what
                                #   the caps withheld: the others did not take it


class FeedbackState(dict):
    """group -> log correction, and ``basis``: the split of the busy groups it was learnt for (group -> percent of
    their targets' sum). The correction a split needs depends on that split (90/10 needs more than 50/30/20), so it
    is learnt again from nothing when the busy groups change or one's share of their targets moves by more than
    ``RESET_POINTS`` since the basis (an admin's new weights; the dynamic policy's slow drift keeps it)."""
    basis: dict = {}
    caps: dict = {}             # group -> cores its CPU is capped at (feedback_caps)
    pinned: dict = {}           # group -> cycles over its target with its weight at the lower bound
    cap_total: float = 0.0      # cores the busy groups used together when the caps were set (the most since)
    withheld: float = 0.0       # cores the caps took from their groups when they were set
    no_caps: bool = False       # caps were tried for this basis and freed CPU no one took: not again


RESET_POINTS = 5.0


def _basis(targets: dict[str, float], live: list[str]) -> dict[str, float]:
    tsum = sum(targets[g] for g in live)
    return {g: 100.0 * targets[g] / tsum for g in live} if tsum else {}


def _same_basis(old: dict[str, float], new: dict[str, float]) -> bool:
    return set(old) == set(new) and all(abs(old[g] - new[g]) <= RESET_POINTS for g in new)


def feedback_weights(targets: dict[str, float], measured: dict[str, float], busy: set[str],
                     state: dict[str, float], fb: Feedback = Feedback()) -> tuple[dict[str, float], FeedbackState]:
    """One bounded correction step. targets: group -> the policy's percent; measured: group -> percent of the
    CPU the groups used over the last cycle; busy: the groups that had work and used CPU in it; state: group ->
    log correction, as returned by the previous call ({} at first). Only the busy groups' relative split is
    corrected (it needs two of them); the correction of a group that is not busy fades by one step per cycle;
    a new split of the busy groups starts from no correction (FeedbackState).
    Returns (group -> percent to write, summing like the targets; the new state)."""
    lim = math.log(fb.bound)
    live = [g for g in targets if g in busy and targets[g] > 0]
    basis = getattr(state, "basis", {})
    if len(live) >= 2:
        now = _basis(targets, live)
        if not _same_basis(basis, now):
            state, basis = {}, now
    new = {g: state.get(g, 0.0) for g in targets}
    tsum, msum = sum(targets[g] for g in live), sum(max(0.0, measured.get(g, 0.0)) for g in live)
    if len(live) >= 2 and msum > 0:
        for g in live:
            t, m = 100.0 * targets[g] / tsum, 100.0 * max(0.0, measured.get(g, 0.0)) / msum
            if abs(t - m) > fb.deadband:
                d = fb.gain * math.log(t / max(m, 0.5))
                new[g] += max(-fb.step, min(fb.step, d))
        mean = sum(new[g] for g in live) / len(live)     # only ratios matter: keep the corrections centred
        for g in live:
            new[g] = max(-lim, min(lim, new[g] - mean))
    for g in targets:
        if g not in live:
            new[g] = math.copysign(max(0.0, abs(new[g]) - fb.step), new[g])
    carried = state
    state = FeedbackState((g, v) for g, v in new.items() if v)
    state.basis = basis if state else {}
    if carried is not None and getattr(carried, "basis", None) is basis:     # same basis: what the caps knew
        state.caps, state.pinned = carried.caps, carried.pinned
        state.cap_total, state.no_caps, state.withheld = carried.cap_total, carried.no_caps, carried.withheld
    return corrected(targets, state), state


def feedback_caps(targets: dict[str, float], measured: dict[str, float], busy: set[str], cores: float,
                  state: FeedbackState, fb: Feedback = Feedback()) -> FeedbackState:
    """Where weights no longer move the split, a CPU cap. Fork-heavy jobs get CPU whatever their weight (each
    fork, exec and exit wakes a task that waits out the running slice: at 99/1 the small group still had 22 % of
    2 cores), so a busy group that stays over its target while the weights are spent (a busy group's correction
    at the bound) for ``cap_after`` cycles is capped at its target's part of what the busy groups use together (``cores``, the
    most seen since). A cap is a bound, not a reservation: it is kept only while the others take the CPU it
    frees; when the busy groups together lose ``cap_loss`` of what the caps withheld, every cap goes and none is
    tried again for this basis. A group that is no longer busy loses its cap; a new basis (new weights, a new set of busy groups)
    starts without caps (FeedbackState). ``measured``: percent of the CPU the groups used; ``state``: what
    feedback_weights returned this cycle. Returns the state with its caps."""
    if not fb.caps:
        return state
    lim = math.log(fb.bound)
    live = [g for g in targets if g in busy and targets[g] > 0]
    caps = {g: c for g, c in state.caps.items() if g in live}
    if len(live) < 2 or not state.basis:
        caps = {}
    if caps and state.cap_total - cores > fb.cap_loss * state.withheld:
        caps, state.no_caps = {}, True          # the CPU a cap freed was not taken: it only wasted it
    tsum, msum = sum(targets[g] for g in live), sum(max(0.0, measured.get(g, 0.0)) for g in live)
    pinned = {}
    # the weights are spent when a busy group's correction is at the bound (with three groups, the one short of
    # its target is raised to it while the others are held near the middle by the re-centring)
    spent = any(abs(state.get(g, 0.0)) >= lim - 1e-6 for g in live)
    if len(live) >= 2 and msum > 0 and not state.no_caps:
        total = max(cores, state.cap_total) if caps else cores
        for g in live:
            t, m = 100.0 * targets[g] / tsum, 100.0 * max(0.0, measured.get(g, 0.0)) / msum
            if g not in caps and m > t + fb.deadband and spent:
                pinned[g] = state.pinned.get(g, 0) + 1
            if pinned.get(g, 0) >= fb.cap_after or g in caps:
                cap = round(max(0.01, total * t / 100.0), 3)
                if g not in caps:
                    state.withheld += max(0.0, cores * m / 100.0 - cap)
                caps[g] = cap
                pinned.pop(g, None)
        state.cap_total = total if caps else 0.0
    if not caps:
        state.withheld = 0.0
    state.caps, state.pinned = caps, pinned
    return state


def corrected(targets: dict[str, float], state: dict[str, float]) -> dict[str, float]:
    """The percent to write per group: each target times exp(its correction in ``state``), scaled back to the
    targets' sum (the targets themselves without corrections)."""
    if not state:
        return dict(targets)
    raw = {g: targets[g] * math.exp(state.get(g, 0.0)) for g in targets}
    total, want = sum(raw.values()), sum(targets.values())
    return {g: round(v * want / total, 3) if total else targets[g] for g, v in raw.items()}


def feedback_step(targets: dict[str, float], report: AgentReport, step_usec: dict[str, int], seconds: float,
                  state: dict[str, float], fb: Feedback = Feedback()) -> tuple[dict[str, float], FeedbackState]:
    """feedback_weights from one node's cycle: its agent's report (mechanism, pids per group) and its groups'
    CPU over the last few seconds (UsageWindow.recent). Only cgroups are corrected: renice cannot shift CPU
    between groups, and /proc-summed usage is not cumulative."""
    if not report.ok or not (report.mechanism or "").startswith("cgroup") or seconds <= 0:
        return dict(targets), FeedbackState()
    if any(g.get("usage_source") != "cgroup" for g in report.groups.values()):
        return dict(targets), FeedbackState()
    total = sum(step_usec.get(g, 0) for g in targets)
    measured = {g: 100.0 * step_usec.get(g, 0) / total for g in targets} if total else {}
    busy = {g for g in targets if (report.groups.get(g) or {}).get("pids")
            and step_usec.get(g, 0) >= fb.min_cores * seconds * 1e6}
    written, new = feedback_weights(targets, measured, busy, state, fb)
    cores = sum(step_usec.get(g, 0) for g in busy) / 1e6 / seconds
    return written, feedback_caps(targets, measured, busy, cores, new, fb)
