"""Cluster policies: pure functions of a snapshot and ``now`` that return actions.

No I/O, no clock, no database here: the poller builds a :class:`Snapshot`, calls :func:`decide` and
carries out the :class:`Decision`.

Rules shared by every policy (each is tested in ``tests/unit/test_policies.py``):

- Pending jobs are considered in submission order, ``(seq, id)``.
- A job that waits for another (its ``blocked`` reason: a dependency not met yet, evaluated by the poller) is
  never dispatched, gets that reason, and is invisible to the rest of the decision: it neither blocks nor
  activates a scheduler, nor counts as demand.
- Why a job waits is data: ``Decision.reasons`` holds a :class:`Reason` per waiting job (a stable ``text``,
  recorded as the job's note and as an event when it changes, and a ``detail`` with the numbers of the
  moment, which ``GET /jobs/{id}/why`` shows); ``Decision.waiting`` is the same texts.
- A job of an unreachable scheduler is never dispatched ("waiting: scheduler X unreachable") and never
  blocks jobs of other schedulers; the scheduler's CPU share is computed as if it were reachable, because
  its jobs may still run on the nodes.
- At most ``snapshot.max_dispatch`` jobs are dispatched; the others that would have gone get
  "waiting: dispatch limit per cycle", and go first next cycle since the order is stable.
- Shares are percents that sum to 100, each at least :data:`MIN_SHARE` (a cgroup weight cannot be 0),
  and every node gets the same split: the policies speak about schedulers, not about nodes.

exclusive
    One scheduler at a time has work in flight (ours or foreign). The walk over the pending jobs dispatches
    jobs of the active scheduler until it meets a job of another *reachable* scheduler; from then on nothing
    more is dispatched, the active scheduler drains, and the next one is chosen as the scheduler of the
    oldest pending job among reachable schedulers. Since later submissions never overtake that job, a
    stream of the active scheduler's jobs cannot starve the others; since unreachable schedulers are skipped
    both in the walk and when choosing, one dead master cannot stall the others. An unreachable scheduler
    that still has jobs in flight counts as active (they may be running on the nodes): exclusivity wins.
best_effort
    Everything reachable is dispatched, the high-priority scheduler's jobs first. While it has running jobs
    (ours or foreign), the others get MIN_SHARE each and it gets the rest; otherwise shares are equal.
shared
    Everything reachable is dispatched in submission order; shares follow the configured weights.
dynamic
    Dispatch as shared; shares follow effective weights corrected by each scheduler's decayed past usage
    (see :func:`effective_weights` and :func:`decay_usage`).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .model import Policy, Reason

MIN_SHARE = 1.0  # percent of CPU a scheduler keeps when the policy starves it (cgroup weights cannot be 0)
MAX_BOOST = 4.0  # dynamic: an effective weight stays within [weight / MAX_BOOST, weight * MAX_BOOST]
USAGE_HALF_LIFE = 3600.0  # dynamic: suggested half-life (seconds) of the decayed usage kept by the poller


@dataclass(frozen=True)
class SchedulerView:
    queue_id: int
    name: str
    weight: int                 # configured 0..100
    reachable: bool             # its master answered the last batched status call
    in_flight: int = 0          # our jobs DISPATCHING, QUEUED or RUNNING in it
    running: int = 0            # of those, RUNNING
    foreign_active: int = 0     # jobs submitted directly to the scheduler (not by us) pending or running
    unreachable_since: str | None = None    # UTC, when its status calls started failing (for the reasons)


@dataclass(frozen=True)
class PendingJob:
    id: int
    queue_id: int
    seq: int                    # submission order (smaller = older); ties broken by id
    blocked: Reason | None = None   # it waits for something outside the policy (a dependency): never dispatched


@dataclass(frozen=True)
class Snapshot:
    policy: Policy
    schedulers: tuple[SchedulerView, ...]
    pending: tuple[PendingJob, ...]           # jobs TO_BE_QUEUED, any order
    node_ids: tuple[int, ...] = ()
    high_priority: int | None = None          # queue_id of the high-priority scheduler (best_effort)
    usage: dict[int, float] = field(default_factory=dict)   # queue_id -> decayed CPU usage (dynamic)
    max_dispatch: int = 1000                  # at most this many dispatches per decision


@dataclass
class Decision:
    dispatch: list[int] = field(default_factory=list)             # job ids, in the order to submit
    waiting: dict[int, str] = field(default_factory=dict)         # job id -> why it is not dispatched now
    reasons: dict[int, Reason] = field(default_factory=dict)      # job id -> the same, as data
    shares: dict[int, float] = field(default_factory=dict)        # queue_id -> CPU share in percent (sums to 100)
    node_shares: dict[int, dict[int, float]] = field(default_factory=dict)  # node_id -> queue_id -> percent


# --------------------------------------------------------------------------------------------------
# Entry point


def decide(snapshot: Snapshot, now: float) -> Decision:
    """Return what the poller should do this cycle; the same snapshot always gives the same decision.

    ``now`` is part of the contract so that a policy may depend on time without reading a clock; none of
    the current policies needs it.
    """
    views = _index_schedulers(snapshot.schedulers)
    waiting: dict[int, Reason] = {}
    jobs: list[PendingJob] = []
    for job in _in_submission_order(snapshot.pending):
        if job.blocked is not None:
            waiting[job.id] = job.blocked
        else:
            jobs.append(job)
    eligible: list[PendingJob] = []
    for job in jobs:
        reason = _unavailable_reason(job, views)
        if reason is None:
            eligible.append(job)
        else:
            waiting[job.id] = reason

    policy = Policy(snapshot.policy)
    in_flight: list[int] = []
    if policy is Policy.EXCLUSIVE:
        candidates, exclusive_waiting, in_flight = _exclusive_walk(jobs, views)
        waiting.update(exclusive_waiting)
    elif policy is Policy.BEST_EFFORT:
        candidates = _high_priority_first(eligible, snapshot.high_priority)
    else:
        candidates = list(eligible)

    dispatch = [job.id for job in candidates[:max(snapshot.max_dispatch, 0)]]
    for i, job in enumerate(candidates[len(dispatch):]):
        waiting[job.id] = Reason("dispatch_limit", "waiting: dispatch limit per cycle",
                                 f"at most {max(snapshot.max_dispatch, 0)} dispatches per cycle; "
                                 f"{len(dispatch) + i} jobs go before it")

    if policy is Policy.EXCLUSIVE:
        active = in_flight or ([candidates[0].queue_id] if dispatch else [])
        shares = exclusive_shares(views, active)
    elif policy is Policy.BEST_EFFORT:
        shares = best_effort_shares(views, snapshot.high_priority)
    elif policy is Policy.SHARED:
        shares = normalise_shares({q: float(v.weight) for q, v in views.items()})
    else:
        shares = dynamic_shares(views, _queues_with_pending(jobs), snapshot.usage)

    return Decision(
        dispatch=dispatch,
        waiting={jid: r.text for jid, r in waiting.items()},
        reasons=waiting,
        shares=shares,
        node_shares={node_id: dict(shares) for node_id in snapshot.node_ids},
    )


def snapshot_of(*, mode: Mapping, queues, active: Mapping[int, tuple[int, int]], foreign: Mapping[int, int],
                reachable: Mapping[int, bool], pending: Iterable[tuple[int, int]],
                blocked: Mapping[int, Reason] | None = None, usage: Mapping[int, float] | None = None,
                node_ids: Iterable[int] = (), max_dispatch: int = 1000) -> Snapshot:
    """The snapshot a decision is made on, from plain values: ``mode`` as stored (policy, high_priority,
    weights by queue id as text), the configured ``queues`` (model.Queue), per queue id ``active`` (in flight,
    running), ``foreign`` jobs active in it and whether it is ``reachable``, ``pending`` (job id, queue id)
    jobs waiting in our queue, ``blocked`` reasons of jobs waiting for something else (dependencies).
    One builder for the poller (this cycle's observations) and the service (the database's: why a job waits,
    what a proposed mode would do), so both decide alike."""
    weights = mode.get("weights", {})
    blocked = blocked or {}
    views = tuple(SchedulerView(
        queue_id=q.id, name=q.name, weight=int(weights.get(str(q.id), q.weight)),
        reachable=bool(reachable.get(q.id)), in_flight=active.get(q.id, (0, 0))[0],
        running=active.get(q.id, (0, 0))[1], foreign_active=foreign.get(q.id, 0),
        unreachable_since=getattr(q, "unreachable_since", None)) for q in queues)
    return Snapshot(policy=Policy(mode["policy"]), schedulers=views,
                    pending=tuple(PendingJob(jid, qid, jid, blocked.get(jid)) for jid, qid in pending),
                    node_ids=tuple(node_ids), high_priority=mode.get("high_priority"), usage=dict(usage or {}),
                    max_dispatch=max_dispatch)


# --------------------------------------------------------------------------------------------------
# Helpers common to every policy


def _index_schedulers(schedulers: Iterable[SchedulerView]) -> dict[int, SchedulerView]:
    """Schedulers by queue id, in the snapshot's order (dict order makes the shares deterministic)."""
    views: dict[int, SchedulerView] = {}
    for view in schedulers:
        if view.queue_id in views:
            raise ValueError(f"scheduler queue_id {view.queue_id} appears twice in the snapshot")
        views[view.queue_id] = view
    return views


def _in_submission_order(pending: Iterable[PendingJob]) -> list[PendingJob]:
    """Oldest first; a job id seen twice is kept once, so it can never be dispatched twice."""
    seen: set[int] = set()
    ordered: list[PendingJob] = []
    for job in sorted(pending, key=lambda j: (j.seq, j.id)):
        if job.id not in seen:
            seen.add(job.id)
            ordered.append(job)
    return ordered


def _unavailable_reason(job: PendingJob, views: Mapping[int, SchedulerView]) -> Reason | None:
    """Why this job cannot go to its scheduler whatever the policy, or None when it can."""
    view = views.get(job.queue_id)
    if view is None:
        text = f"waiting: scheduler {job.queue_id} is not configured"
        return Reason("unconfigured", text, text)
    if not view.reachable:
        since = f" since {view.unreachable_since}" if view.unreachable_since else ""
        return Reason("unreachable", f"waiting: scheduler {view.name} unreachable",
                      f"scheduler {view.name} unreachable{since}")
    return None


def _queues_with_pending(jobs: Iterable[PendingJob]) -> set[int]:
    return {job.queue_id for job in jobs}


def _busy(view: SchedulerView) -> bool:
    """In flight anywhere: our jobs handed over to it, or jobs submitted to it directly."""
    return view.in_flight + view.foreign_active > 0


def _names(views: Mapping[int, SchedulerView], queue_ids: Iterable[int]) -> str:
    names = [views[q].name for q in queue_ids]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def normalise_shares(raw: Mapping[int, float], min_share: float = MIN_SHARE) -> dict[int, float]:
    """Turn non-negative weights into percents summing to 100, each at least ``min_share``.

    Weights are made proportional; a scheduler whose proportional share would fall below ``min_share``
    (weight 0 included) is pinned at ``min_share`` and the others share what is left, again in
    proportion (repeated until nothing more falls below). All weights 0 means equal shares. With more than
    ``100 / min_share`` schedulers the floor cannot hold and the shares are simply equal.
    """
    keys = list(raw)
    if not keys:
        return {}
    n = len(keys)
    weights = {k: max(float(raw[k]), 0.0) for k in keys}
    if not math.isfinite(sum(weights.values())):
        raise ValueError(f"weights must be finite: {dict(raw)}")
    if sum(weights.values()) == 0.0 or n * min_share >= 100.0:
        return {k: 100.0 / n for k in keys}
    pinned: set[int] = set()
    while True:
        free = [k for k in keys if k not in pinned]
        budget = 100.0 - min_share * len(pinned)
        total = sum(weights[k] for k in free)
        if total == 0.0:
            shares = {k: budget / len(free) for k in free}
        else:
            shares = {k: budget * weights[k] / total for k in free}
        low = {k for k in free if shares[k] < min_share}
        if not low:
            break
        pinned |= low
    result = {k: (min_share if k in pinned else shares[k]) for k in keys}
    largest = max(keys, key=lambda k: result[k])
    result[largest] = 100.0 - sum(v for k, v in result.items() if k != largest)
    return result


# --------------------------------------------------------------------------------------------------
# exclusive


def _in_flight_text(views: Mapping[int, SchedulerView], queue_ids: Iterable[int]) -> str:
    """"Slurm has 3 jobs in flight" (ours; and the ones submitted to it directly)."""
    parts = []
    for q in queue_ids:
        v = views[q]
        foreign = f" and {v.foreign_active} submitted to it directly" if v.foreign_active else ""
        parts.append(f"{v.name} has {v.in_flight} job{'s' if v.in_flight != 1 else ''} in flight{foreign}")
    return "; ".join(parts)


def _exclusive_walk(
    jobs: list[PendingJob], views: Mapping[int, SchedulerView]
) -> tuple[list[PendingJob], dict[int, Reason], list[int]]:
    """Jobs the exclusive policy would dispatch (before the per-cycle limit), reasons for the rest,
    and the schedulers currently in flight."""
    waiting: dict[int, Reason] = {}
    in_flight = [q for q, v in views.items() if _busy(v)]
    available = [j for j in jobs if _unavailable_reason(j, views) is None]

    if len(in_flight) > 1:  # e.g. foreign jobs on two schedulers, or right after a policy change
        reason = Reason("exclusive", f"waiting: exclusive, {_names(views, in_flight)} draining",
                        f"exclusive: {_in_flight_text(views, in_flight)}; one scheduler at a time")
        return [], {j.id: reason for j in available}, in_flight
    if in_flight:
        active = in_flight[0]
    elif available:
        active = available[0].queue_id   # oldest job of a reachable scheduler picks the next one
    else:
        return [], waiting, in_flight

    candidates: list[PendingJob] = []
    barrier: PendingJob | None = None
    for job in jobs:
        if views.get(job.queue_id) is None or not views[job.queue_id].reachable:
            continue  # already has its reason; never blocks the others
        if barrier is None and job.queue_id != active:
            barrier = job
        if barrier is None:
            if job.queue_id == active:
                candidates.append(job)
        else:
            busy = _in_flight_text(views, [active]) if _busy(views[active]) else \
                f"{views[active].name} goes first (its job {candidates[0].id if candidates else '?'} is older)"
            waiting[job.id] = Reason(
                "exclusive",
                f"waiting: exclusive, {views[active].name} draining, {views[barrier.queue_id].name} next",
                f"exclusive: {busy}; {views[barrier.queue_id].name} is next")
    return candidates, waiting, in_flight


def exclusive_shares(views: Mapping[int, SchedulerView], active: Iterable[int]) -> dict[int, float]:
    """The active scheduler(s) get everything but MIN_SHARE per other scheduler; nobody active: equal."""
    active_set = set(active)
    if not active_set:
        return normalise_shares({q: 1.0 for q in views})
    return normalise_shares({q: (1.0 if q in active_set else 0.0) for q in views})


# --------------------------------------------------------------------------------------------------
# best_effort


def _high_priority_first(jobs: list[PendingJob], high_priority: int | None) -> list[PendingJob]:
    """The high-priority scheduler's jobs first, then the others; submission order within each part."""
    return [j for j in jobs if j.queue_id == high_priority] + [j for j in jobs if j.queue_id != high_priority]


def best_effort_shares(views: Mapping[int, SchedulerView], high_priority: int | None) -> dict[int, float]:
    """While the high-priority scheduler runs anything (ours or foreign) the others get MIN_SHARE.

    An unreachable high-priority scheduler keeps the share its last known activity gives it: its jobs may
    still be running on the nodes.
    """
    hp = views.get(high_priority) if high_priority is not None else None
    if hp is None or (hp.running == 0 and hp.foreign_active == 0):
        return normalise_shares({q: 1.0 for q in views})
    return normalise_shares({q: (1.0 if q == high_priority else 0.0) for q in views})


# --------------------------------------------------------------------------------------------------
# dynamic


def decay_usage(
    previous: Mapping[int, float], measured: Mapping[int, float], dt: float, half_life: float
) -> dict[int, float]:
    """Decayed CPU usage per scheduler after an interval of ``dt`` seconds.

    ``previous`` is the value from the last call, ``measured`` the CPU consumed (e.g. CPU-seconds summed
    over the nodes) by each scheduler's jobs during the interval. Old usage halves every ``half_life``
    seconds, so an imbalance is paid back within a few half-lives and never accumulates without bound
    (a constant rate ``r`` converges to ``r * half_life / ln 2``). A negative measurement (a counter that
    was reset) counts as 0.
    """
    if half_life <= 0 or not math.isfinite(half_life):
        raise ValueError(f"half_life must be a positive number of seconds, got {half_life!r}")
    if dt < 0 or not math.isfinite(dt):
        raise ValueError(f"dt must be a non-negative number of seconds, got {dt!r}")
    factor = 0.5 ** (dt / half_life)
    result: dict[int, float] = {}
    for q in sorted(set(previous) | set(measured)):
        result[q] = max(previous.get(q, 0.0), 0.0) * factor + max(measured.get(q, 0.0), 0.0)
    return result


def effective_weights(
    weights: Mapping[int, float], usage: Mapping[int, float], max_boost: float = MAX_BOOST
) -> dict[int, float]:
    """Fair-share correction for the competing schedulers (those with demand).

    ``effective = weight * clip((target_fraction / used_fraction) ** 2, 1/max_boost, max_boost)``, where
    the target fraction is the scheduler's weight over the competitors' weights and the used fraction its
    decayed usage over theirs. A scheduler that used less than its target is boosted, one that used more
    is damped, at most by ``max_boost`` either way: a long-idle scheduler gets at most ``max_boost`` times
    its weight, for a time bounded by the usage half-life, rather than the CPU for as long as it was idle.

    Why squared: with the plain ratio, two busy schedulers with equal weights get shares equal to each
    other's used fractions, which pays back an early imbalance only slowly (the residual shrinks like
    1/T^2); the square closes it markedly faster (see the simulation in the tests) while the shares still
    move smoothly from cycle to cycle, unlike a bang-bang rule. Without any usage yet the configured
    weights apply unchanged. All weights 0 count as equal.
    """
    if not weights:
        return {}
    base = {q: max(float(w), 0.0) for q, w in weights.items()}
    if sum(base.values()) == 0.0:
        base = {q: 1.0 for q in base}
    total_weight = sum(base.values())
    used = {q: max(usage.get(q, 0.0), 0.0) for q in base}
    total_used = sum(used.values())
    if total_used <= 0.0:
        return base
    result: dict[int, float] = {}
    for q, w in base.items():
        if w == 0.0:
            result[q] = 0.0
            continue
        target = w / total_weight
        fraction = used[q] / total_used
        factor = max_boost if fraction == 0.0 else (target / fraction) ** 2
        result[q] = w * min(max(factor, 1.0 / max_boost), max_boost)
    return result


def dynamic_shares(
    views: Mapping[int, SchedulerView], with_pending: Iterable[int], usage: Mapping[int, float]
) -> dict[int, float]:
    """Competing schedulers (pending jobs or work in flight) split the CPU by effective weights; idle ones
    get MIN_SHARE (cgroups are work-conserving, so an idle scheduler's share costs nobody anything)."""
    pending = set(with_pending)
    competing = [q for q, v in views.items() if q in pending or _busy(v)]
    effective = effective_weights({q: views[q].weight for q in competing}, usage)
    return normalise_shares({q: effective.get(q, 0.0) for q in views})
