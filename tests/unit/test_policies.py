"""Policies: snapshot in, decision out. Tables of named cases, small simulations, random snapshots.

Scheduler ids used throughout: 1 = SGE, 2 = Slurm, 3 = YARN.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import pytest

from metasched.model import Policy
from metasched.policies import (
    MAX_BOOST,
    MIN_SHARE,
    Decision,
    PendingJob,
    SchedulerView,
    Snapshot,
    decay_usage,
    decide,
    normalise_shares,
)

SGE, SLURM, YARN = 1, 2, 3
NAMES = {SGE: "SGE", SLURM: "Slurm", YARN: "YARN"}
EX, BE, SH, DY = Policy.EXCLUSIVE, Policy.BEST_EFFORT, Policy.SHARED, Policy.DYNAMIC
LIMIT = "waiting: dispatch limit per cycle"


def s(q: int, weight: int = 50, *, up: bool = True, flight: int = 0, running: int = 0,
      foreign: int = 0) -> SchedulerView:
    return SchedulerView(q, NAMES[q], weight, up, in_flight=flight, running=running, foreign_active=foreign)


def j(job_id: int, q: int, seq: int | None = None) -> PendingJob:
    return PendingJob(job_id, q, job_id if seq is None else seq)


def unreachable(q: int) -> str:
    return f"waiting: scheduler {NAMES[q]} unreachable"


def draining(active: int, nxt: int) -> str:
    return f"waiting: exclusive, {NAMES[active]} draining, {NAMES[nxt]} next"


@dataclass
class Case:
    name: str
    policy: Policy
    schedulers: tuple[SchedulerView, ...]
    pending: tuple[PendingJob, ...] = ()
    dispatch: list[int] = field(default_factory=list)
    waiting: dict[int, str] = field(default_factory=dict)   # exact
    shares: dict[int, float] | None = None                  # exact up to 1e-6 when given
    high_priority: int | None = None
    usage: dict[int, float] = field(default_factory=dict)
    max_dispatch: int = 1000

    def snapshot(self) -> Snapshot:
        return Snapshot(self.policy, self.schedulers, self.pending, node_ids=(10, 11),
                        high_priority=self.high_priority, usage=self.usage, max_dispatch=self.max_dispatch)


THIRD = 100 / 3
TWO = (s(SGE), s(SLURM))
THREE = (s(SGE), s(SLURM), s(YARN))

CASES = [
    # ---------------------------------------------------------------- exclusive
    Case("exclusive: empty queue, nothing in flight -> equal shares", EX, THREE,
         shares={SGE: THIRD, SLURM: THIRD, YARN: THIRD}),
    Case("exclusive: empty queue, SGE still running -> SGE keeps the CPU", EX,
         (s(SGE, flight=2, running=2), s(SLURM), s(YARN)), shares={SGE: 98, SLURM: 1, YARN: 1}),
    Case("exclusive: one scheduler idle, the other's jobs all go", EX, TWO,
         (j(1, SGE), j(2, SGE), j(3, SGE)), dispatch=[1, 2, 3], shares={SGE: 99, SLURM: 1}),
    Case("exclusive: nothing in flight -> oldest job picks the scheduler", EX, TWO,
         (j(1, SLURM), j(2, SGE), j(3, SLURM)), dispatch=[1],
         waiting={2: draining(SLURM, SGE), 3: draining(SLURM, SGE)}, shares={SGE: 1, SLURM: 99}),
    Case("exclusive: active scheduler dispatches until another's job, then drains", EX,
         (s(SGE, flight=1), s(SLURM)), (j(1, SGE), j(2, SGE), j(3, SLURM), j(4, SGE)), dispatch=[1, 2],
         waiting={3: draining(SGE, SLURM), 4: draining(SGE, SLURM)}, shares={SGE: 99, SLURM: 1}),
    Case("exclusive: older job of another scheduler stops the active one at once", EX,
         (s(SGE, flight=1), s(SLURM)), (j(5, SGE, seq=2), j(6, SLURM, seq=1)),
         waiting={5: draining(SGE, SLURM), 6: draining(SGE, SLURM)}, shares={SGE: 99, SLURM: 1}),
    Case("exclusive: submission ties are broken by job id", EX, TWO,
         (j(8, SGE, seq=1), j(7, SLURM, seq=1)), dispatch=[7], waiting={8: draining(SLURM, SGE)}),
    Case("exclusive: foreign jobs make a scheduler busy", EX, (s(SGE), s(SLURM, foreign=2)),
         (j(1, SGE),), waiting={1: draining(SLURM, SGE)}, shares={SGE: 1, SLURM: 99}),
    Case("exclusive: two schedulers in flight -> nothing goes until one drains", EX,
         (s(SGE, flight=1), s(SLURM, foreign=1), s(YARN)), (j(1, SGE), j(2, YARN)),
         waiting={1: "waiting: exclusive, SGE and Slurm draining",
                  2: "waiting: exclusive, SGE and Slurm draining"},
         shares={SGE: 49.5, SLURM: 49.5, YARN: 1}),
    Case("exclusive: unreachable scheduler's oldest job does not stall the others", EX,
         (s(SGE), s(SLURM, up=False)), (j(1, SLURM), j(2, SGE), j(3, SLURM), j(4, SGE)), dispatch=[2, 4],
         waiting={1: unreachable(SLURM), 3: unreachable(SLURM)}, shares={SGE: 99, SLURM: 1}),
    Case("exclusive: high-priority scheduler unreachable (ignored by exclusive)", EX,
         (s(SGE, up=False), s(SLURM)), (j(1, SGE), j(2, SLURM)), dispatch=[2],
         waiting={1: unreachable(SGE)}, high_priority=SGE, shares={SGE: 1, SLURM: 99}),
    Case("exclusive: unreachable scheduler still in flight keeps exclusivity", EX,
         (s(SGE, up=False, flight=1), s(SLURM)), (j(1, SLURM), j(2, SGE)),
         waiting={1: draining(SGE, SLURM), 2: unreachable(SGE)}, shares={SGE: 99, SLURM: 1}),
    Case("exclusive: weights not summing to 100 are ignored", EX, (s(SGE, 30), s(SLURM, 10)),
         shares={SGE: 50, SLURM: 50}),
    Case("exclusive: weight 0 is ignored", EX, (s(SGE, 0), s(SLURM, 100)), (j(1, SGE),),
         dispatch=[1], shares={SGE: 99, SLURM: 1}),
    Case("exclusive: all weights 0 -> equal when idle", EX, (s(SGE, 0), s(SLURM, 0)),
         shares={SGE: 50, SLURM: 50}),
    Case("exclusive: max_dispatch", EX, TWO, (j(1, SGE), j(2, SGE), j(3, SGE), j(4, SLURM)),
         dispatch=[1, 2], waiting={3: LIMIT, 4: draining(SGE, SLURM)}, max_dispatch=2),
    Case("exclusive: max_dispatch 0 dispatches nothing and activates nobody", EX, TWO, (j(1, SGE),),
         waiting={1: LIMIT}, max_dispatch=0, shares={SGE: 50, SLURM: 50}),
    Case("exclusive: job of an unknown scheduler waits and blocks nobody", EX, TWO,
         (j(1, 9), j(2, SGE)), dispatch=[2], waiting={1: "waiting: scheduler 9 is not configured"}),
    # ---------------------------------------------------------------- best_effort (SGE high priority)
    Case("best_effort: empty queue, high priority idle -> equal", BE, THREE, high_priority=SGE,
         shares={SGE: THIRD, SLURM: THIRD, YARN: THIRD}),
    Case("best_effort: high priority running -> others get the minimum", BE,
         (s(SGE, flight=1, running=1), s(SLURM, flight=3, running=3), s(YARN)), high_priority=SGE,
         shares={SGE: 98, SLURM: 1, YARN: 1}),
    Case("best_effort: foreign jobs on the high-priority scheduler count as running", BE,
         (s(SGE, foreign=1), s(SLURM), s(YARN)), high_priority=SGE, shares={SGE: 98, SLURM: 1, YARN: 1}),
    Case("best_effort: high priority only queued, nothing running -> equal", BE,
         (s(SGE, flight=2), s(SLURM, running=1, flight=1)), high_priority=SGE, shares={SGE: 50, SLURM: 50}),
    Case("best_effort: others running, high priority idle -> equal", BE,
         (s(SGE), s(SLURM, flight=4, running=4), s(YARN, foreign=2)), high_priority=SGE,
         shares={SGE: THIRD, SLURM: THIRD, YARN: THIRD}),
    Case("best_effort: high priority's jobs first, then the others by submission", BE, THREE,
         (j(1, SLURM), j(2, SGE), j(3, YARN), j(4, SGE)), dispatch=[2, 4, 1, 3], high_priority=SGE),
    Case("best_effort: one scheduler idle", BE, TWO, (j(1, SLURM), j(2, SLURM)), dispatch=[1, 2],
         high_priority=SGE, shares={SGE: 50, SLURM: 50}),
    Case("best_effort: high priority unreachable does not block the others", BE,
         (s(SGE, up=False, running=1, flight=1), s(SLURM), s(YARN)), (j(1, SGE), j(2, SLURM), j(3, YARN)),
         dispatch=[2, 3], waiting={1: unreachable(SGE)}, high_priority=SGE,
         shares={SGE: 98, SLURM: 1, YARN: 1}),
    Case("best_effort: weights not summing to 100 are ignored", BE, (s(SGE, 30), s(SLURM, 10)),
         high_priority=SGE, shares={SGE: 50, SLURM: 50}),
    Case("best_effort: weight 0 is ignored", BE, (s(SGE, 0, running=1, flight=1), s(SLURM, 100)),
         high_priority=SGE, shares={SGE: 99, SLURM: 1}),
    Case("best_effort: all weights 0 -> equal", BE, (s(SGE, 0), s(SLURM, 0)), high_priority=SGE,
         shares={SGE: 50, SLURM: 50}),
    Case("best_effort: max_dispatch goes to the high-priority scheduler first", BE, TWO,
         (j(1, SLURM), j(2, SGE), j(3, SGE)), dispatch=[2, 3], waiting={1: LIMIT}, high_priority=SGE,
         max_dispatch=2),
    Case("best_effort: no high-priority scheduler configured -> submission order, equal", BE, TWO,
         (j(2, SGE), j(1, SLURM)), dispatch=[1, 2], shares={SGE: 50, SLURM: 50}),
    # ---------------------------------------------------------------- shared
    Case("shared: empty queue -> shares follow the weights", SH, (s(SGE, 60), s(SLURM, 40)),
         shares={SGE: 60, SLURM: 40}),
    Case("shared: one scheduler idle -> shares still follow the weights", SH, (s(SGE, 70), s(SLURM, 30)),
         (j(1, SGE), j(2, SGE)), dispatch=[1, 2], shares={SGE: 70, SLURM: 30}),
    Case("shared: all jobs in submission order", SH, THREE, (j(3, YARN, 5), j(1, SLURM, 7), j(2, SGE, 5)),
         dispatch=[2, 3, 1]),
    Case("shared: weights not summing to 100 are normalised", SH, (s(SGE, 10), s(SLURM, 10), s(YARN, 20)),
         shares={SGE: 25, SLURM: 25, YARN: 50}),
    Case("shared: weight 0 gets the minimum, the rest renormalised", SH,
         (s(SGE, 0), s(SLURM, 50), s(YARN, 50)),
         shares={SGE: 1, SLURM: 49.5, YARN: 49.5}),
    Case("shared: a tiny proportional share is raised to the minimum", SH, (s(SGE, 100), s(SLURM, 1)),
         shares={SGE: 99, SLURM: 1}),
    Case("shared: all weights 0 -> equal", SH, (s(SGE, 0), s(SLURM, 0), s(YARN, 0)),
         shares={SGE: THIRD, SLURM: THIRD, YARN: THIRD}),
    Case("shared: high-priority scheduler unreachable: its jobs wait, its share stays", SH,
         (s(SGE, 75, up=False), s(SLURM, 25)), (j(1, SGE), j(2, SLURM)), dispatch=[2],
         waiting={1: unreachable(SGE)}, high_priority=SGE, shares={SGE: 75, SLURM: 25}),
    Case("shared: max_dispatch keeps submission order", SH, TWO, (j(1, SLURM), j(2, SGE), j(3, SLURM)),
         dispatch=[1, 2], waiting={3: LIMIT}, max_dispatch=2),
    # ---------------------------------------------------------------- dynamic
    Case("dynamic: empty queue, nobody competes -> equal", DY, (s(SGE, 80), s(SLURM, 20)),
         usage={SGE: 5.0}, shares={SGE: 50, SLURM: 50}),
    Case("dynamic: one scheduler idle gets the minimum", DY, (s(SGE, 20), s(SLURM, 80)), (j(1, SGE),),
         dispatch=[1], shares={SGE: 99, SLURM: 1}),
    Case("dynamic: no usage history -> configured weights", DY, (s(SGE, 60), s(SLURM, 40)),
         (j(1, SGE), j(2, SLURM)), dispatch=[1, 2], shares={SGE: 60, SLURM: 40}),
    Case("dynamic: weights not summing to 100 are normalised", DY, (s(SGE, 30), s(SLURM, 10)),
         (j(1, SGE), j(2, SLURM)), dispatch=[1, 2], shares={SGE: 75, SLURM: 25}),
    Case("dynamic: weight 0 gets the minimum", DY, (s(SGE, 0), s(SLURM, 50)), (j(1, SGE), j(2, SLURM)),
         dispatch=[1, 2], usage={SLURM: 100.0}, shares={SGE: 1, SLURM: 99}),
    Case("dynamic: all weights 0 -> competitors equal", DY, (s(SGE, 0), s(SLURM, 0), s(YARN, 0)),
         (j(1, SGE), j(2, SLURM)), dispatch=[1, 2], shares={SGE: 49.5, SLURM: 49.5, YARN: 1}),
    Case("dynamic: past overuse is paid back ((0.5/0.75)^2 vs (0.5/0.25)^2)", DY,
         (s(SGE, 50, flight=1), s(SLURM, 50, flight=1)), usage={SGE: 300.0, SLURM: 100.0},
         shares={SGE: 10, SLURM: 90}),
    Case("dynamic: the boost of a never-used scheduler is capped", DY,
         (s(SGE, 50, flight=1), s(SLURM, 50)), (j(1, SLURM),), dispatch=[1], usage={SGE: 1e9},
         shares={SGE: 100 * 0.25 / 4.25, SLURM: 100 * 4 / 4.25}),
    Case("dynamic: usage of an idle scheduler does not matter", DY,
         (s(SGE, 50, flight=1), s(SLURM, 50, flight=1), s(YARN, 50)), usage={YARN: 1e6},
         shares={SGE: 49.5, SLURM: 49.5, YARN: 1}),
    Case("dynamic: foreign jobs are demand", DY, (s(SGE, 50), s(SLURM, 50, foreign=1)),
         shares={SGE: 1, SLURM: 99}),
    Case("dynamic: high-priority scheduler unreachable: its jobs wait, it still competes", DY,
         (s(SGE, 50, up=False, flight=1), s(SLURM, 50)), (j(1, SGE), j(2, SLURM)), dispatch=[2],
         waiting={1: unreachable(SGE)}, high_priority=SGE, shares={SGE: 50, SLURM: 50}),
    Case("dynamic: max_dispatch keeps submission order", DY, TWO, (j(1, SLURM), j(2, SGE), j(3, SLURM)),
         dispatch=[1, 2], waiting={3: LIMIT}, max_dispatch=2),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decision_table(case: Case) -> None:
    decision = decide(case.snapshot(), now=1000.0)
    assert decision.dispatch == case.dispatch
    assert decision.waiting == case.waiting
    if case.shares is not None:
        assert decision.shares == pytest.approx(case.shares, abs=1e-6)
    assert decision.node_shares == {10: decision.shares, 11: decision.shares}


@pytest.mark.parametrize("policy", list(Policy))
def test_same_snapshot_same_decision(policy: Policy) -> None:
    pending = tuple(j(i, (SGE, SLURM, YARN)[i % 3], seq=i // 2) for i in range(1, 30))
    snap = Snapshot(policy, (s(SGE, 20, flight=1, running=1), s(SLURM, 30), s(YARN, 0, up=False)), pending,
                    node_ids=(1, 2, 3), high_priority=SLURM, usage={SGE: 3.0, SLURM: 1.0}, max_dispatch=7)
    first = decide(snap, 1.0)
    shuffled = list(pending)
    random.Random(4).shuffle(shuffled)
    assert decide(snap, 1.0) == first
    assert decide(replace(snap, pending=tuple(shuffled)), 2.0) == first


# ------------------------------------------------------------------------------------------ helpers

@pytest.mark.parametrize("raw, expected", [
    pytest.param({}, {}, id="no schedulers"),
    pytest.param({1: 7}, {1: 100}, id="one scheduler gets everything"),
    pytest.param({1: 1, 2: 3}, {1: 25, 2: 75}, id="proportional"),
    pytest.param({1: 0, 2: 0, 3: 98}, {1: 1, 2: 1, 3: 98}, id="zeros pinned at the minimum"),
    pytest.param({1: 0.5, 2: 99.5}, {1: 1, 2: 99}, id="below the minimum is raised"),
    pytest.param({1: 0, 2: 0}, {1: 50, 2: 50}, id="all zero -> equal"),
], )
def test_normalise_shares(raw: dict[int, float], expected: dict[int, float]) -> None:
    assert normalise_shares(raw) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("previous, measured, dt, half_life, expected", [
    pytest.param({1: 100.0}, {}, 60.0, 60.0, {1: 50.0}, id="one half-life halves"),
    pytest.param({1: 100.0}, {1: 10.0}, 120.0, 60.0, {1: 35.0}, id="two half-lives quarter, then add"),
    pytest.param({}, {2: 4.0}, 30.0, 60.0, {2: 4.0}, id="new scheduler starts from its measurement"),
    pytest.param({1: 8.0}, {1: 2.0}, 0.0, 60.0, {1: 10.0}, id="no time passed: plain sum"),
    pytest.param({1: 8.0}, {1: -5.0}, 0.0, 60.0, {1: 8.0}, id="negative measurement counts as 0"),
])
def test_decay_usage(previous, measured, dt, half_life, expected) -> None:
    assert decay_usage(previous, measured, dt, half_life) == pytest.approx(expected)


@pytest.mark.parametrize("dt, half_life", [(1.0, 0.0), (1.0, -3.0), (-1.0, 60.0)])
def test_decay_usage_rejects_nonsense(dt: float, half_life: float) -> None:
    with pytest.raises(ValueError):
        decay_usage({}, {}, dt, half_life)


def test_decayed_usage_of_a_constant_rate_is_bounded() -> None:
    usage: dict[int, float] = {}
    for _ in range(10_000):
        usage = decay_usage(usage, {1: 1.0}, 1.0, 100.0)
    assert usage[1] < 1.0 + 100.0 / 0.693  # r + r * half_life / ln 2


# ------------------------------------------------------------------------------------------ simulations

def simulate_stream(policy: Policy, cycles: int, b_submitted_at: int, k: int, max_dispatch: int = 1000,
                    ) -> tuple[int | None, list[set[int]]]:
    """SGE gets one new job every cycle, forever; one Slurm job arrives at ``b_submitted_at``.

    Each dispatched job is in flight (and running) for ``k`` cycles. Returns the cycle at which the Slurm
    job was dispatched (None: never) and, per cycle, the set of schedulers that had jobs in flight.
    """
    pending: list[PendingJob] = []
    in_flight: list[tuple[int, int]] = []          # (queue_id, cycle at which it finishes)
    next_id = 1
    dispatched_b_at = None
    busy_per_cycle: list[set[int]] = []
    for cycle in range(cycles):
        in_flight = [(q, end) for q, end in in_flight if end > cycle]
        pending.append(PendingJob(next_id, SGE, next_id))
        next_id += 1
        if cycle == b_submitted_at:
            pending.append(PendingJob(10_000, SLURM, next_id))
            next_id += 1
        counts = {q: sum(1 for fq, _ in in_flight if fq == q) for q in (SGE, SLURM)}
        views = tuple(s(q, flight=counts[q], running=counts[q]) for q in (SGE, SLURM))
        decision = decide(Snapshot(policy, views, tuple(pending), high_priority=SGE,
                                   max_dispatch=max_dispatch), float(cycle))
        by_id = {p.id: p for p in pending}
        for job_id in decision.dispatch:
            in_flight.append((by_id[job_id].queue_id, cycle + k))
            if job_id == 10_000:
                dispatched_b_at = cycle
        pending = [p for p in pending if p.id not in decision.dispatch]
        busy_per_cycle.append({q for q, _ in in_flight})
    return dispatched_b_at, busy_per_cycle


@pytest.mark.parametrize("policy, k, bound", [
    pytest.param(EX, 3, 3 + 1, id="exclusive: Slurm waits only for SGE to drain (k=3)"),
    pytest.param(EX, 10, 10 + 1, id="exclusive: Slurm waits only for SGE to drain (k=10)"),
    pytest.param(BE, 5, 0, id="best_effort: Slurm dispatched at once"),
    pytest.param(SH, 5, 0, id="shared: Slurm dispatched at once"),
    pytest.param(DY, 5, 0, id="dynamic: Slurm dispatched at once"),
])
def test_stream_of_one_scheduler_does_not_starve_another(policy: Policy, k: int, bound: int) -> None:
    submitted = 7
    dispatched_at, busy = simulate_stream(policy, cycles=200, b_submitted_at=submitted, k=k)
    assert dispatched_at is not None, "the Slurm job was never dispatched"
    assert dispatched_at - submitted <= bound
    if policy is EX:
        assert all(len(b) <= 1 for b in busy), "two schedulers were in flight at once"
        assert SGE in busy[-1], "SGE must get the cluster back after Slurm's job"


def test_exclusive_dispatch_limit_does_not_starve_either() -> None:
    dispatched_at, busy = simulate_stream(EX, cycles=200, b_submitted_at=7, k=4, max_dispatch=1)
    assert dispatched_at is not None and dispatched_at - 7 <= 4 + 1
    assert all(len(b) <= 1 for b in busy)


def simulate_demand(policy: Policy, phases: list[tuple[set[int], int]], half_life: float,
                    weights: tuple[int, int] = (50, 50)) -> tuple[float, list[float]]:
    """One node, one CPU per step, SGE and Slurm. In each phase the listed schedulers have work.

    The CPU is work-conserving, like cgroup weights: the busy schedulers split it in proportion to their
    shares. Usage is fed back through :func:`decay_usage` as the poller does. Returns SGE's cumulative
    (undecayed) fraction of all CPU used and Slurm's share per step.
    """
    usage: dict[int, float] = {}
    total = {SGE: 0.0, SLURM: 0.0}
    slurm_shares: list[float] = []
    step = 0
    for busy, steps in phases:
        for _ in range(steps):
            views = tuple(s(q, w, flight=int(q in busy), running=int(q in busy))
                          for q, w in zip((SGE, SLURM), weights))
            decision = decide(Snapshot(policy, views, (), node_ids=(1,), usage=usage), float(step))
            busy_total = sum(decision.shares[q] for q in busy)
            used = {q: (decision.shares[q] / busy_total if q in busy else 0.0) for q in (SGE, SLURM)}
            for q in total:
                total[q] += used[q]
            usage = decay_usage(usage, used, 1.0, half_life)
            slurm_shares.append(decision.shares[SLURM])
            step += 1
    return total[SGE] / (total[SGE] + total[SLURM]), slurm_shares


A, AB = {SGE}, {SGE, SLURM}
SCENARIOS = {
    "SGE alone 30 steps, then both 120": [(A, 30), (AB, 120)],
    "SGE alone 30, both 60, SGE alone 30, both 180": [(A, 30), (AB, 60), (A, 30), (AB, 180)],
}


@pytest.mark.parametrize("phases", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_dynamic_converges_where_shared_does_not(phases) -> None:
    dynamic, _ = simulate_demand(DY, phases, half_life=1000.0)
    shared, _ = simulate_demand(SH, phases, half_life=1000.0)
    print(f"SGE's cumulative fraction: dynamic {dynamic:.4f}, shared {shared:.4f}")
    assert abs(dynamic - 0.5) < 0.015
    assert shared > 0.55


def test_dynamic_converges_to_unequal_weights() -> None:
    dynamic, _ = simulate_demand(DY, [(A, 30), (AB, 170)], half_life=1000.0, weights=(25, 75))
    shared, _ = simulate_demand(SH, [(A, 30), (AB, 170)], half_life=1000.0, weights=(25, 75))
    print(f"SGE's cumulative fraction (target 0.25): dynamic {dynamic:.4f}, shared {shared:.4f}")
    assert abs(dynamic - 0.25) < 0.02
    assert shared > 0.33


def test_dynamic_idle_scheduler_credit_is_bounded() -> None:
    """Slurm idle for 5 or for 50 half-lives: its boost is capped and its pay-back takes about as long."""
    half_life = 20.0
    cap = 100 * MAX_BOOST / (MAX_BOOST + 1 / MAX_BOOST)
    payback = {}
    for idle_half_lives in (5, 50):
        idle = int(idle_half_lives * half_life)
        _, slurm = simulate_demand(DY, [(A, idle), (AB, 400)], half_life=half_life)
        after = slurm[idle:]
        assert max(after) <= cap + 1e-6
        payback[idle_half_lives] = next(i for i, share in enumerate(after) if share < 60)
    assert payback[50] <= payback[5] * 1.1 + 1
    assert payback[50] < 3 * half_life


# ------------------------------------------------------------------------------------------ properties

def random_snapshot(rng: random.Random) -> Snapshot:
    queue_ids = rng.sample(range(1, 20), rng.randint(1, 6))
    schedulers = []
    for q in queue_ids:
        flight = rng.choice([0, 0, 0, 1, 3])
        schedulers.append(SchedulerView(
            q, f"S{q}", rng.choice([0, 0, 1, 10, 33, 50, 100]), rng.random() > 0.25, in_flight=flight,
            running=rng.randint(0, flight), foreign_active=rng.choice([0, 0, 0, 0, 2])))
    known = queue_ids + [99]  # 99: a job of a scheduler missing from the snapshot
    pending = tuple(PendingJob(i, rng.choice(known) if rng.random() > 0.05 else 99, rng.randint(0, 10))
                    for i in rng.sample(range(1, 1000), rng.randint(0, 25)))
    return Snapshot(
        rng.choice(list(Policy)), tuple(schedulers), pending, node_ids=tuple(range(rng.randint(0, 3))),
        high_priority=rng.choice(queue_ids + [None]),
        usage={q: rng.choice([0.0, rng.random() * 1000]) for q in queue_ids if rng.random() > 0.3},
        max_dispatch=rng.choice([0, 1, 3, 1000]),
    )


def check_invariants(snap: Snapshot, decision: Decision) -> None:
    views = {v.queue_id: v for v in snap.schedulers}
    jobs = {p.id: p for p in snap.pending}
    assert set(decision.shares) == set(views)
    assert sum(decision.shares.values()) == pytest.approx(100.0, abs=1e-6)
    assert all(share >= MIN_SHARE - 1e-9 for share in decision.shares.values())
    assert decision.node_shares == {n: decision.shares for n in snap.node_ids}
    assert len(decision.dispatch) == len(set(decision.dispatch)), "a job dispatched twice"
    assert len(decision.dispatch) <= max(snap.max_dispatch, 0)
    assert set(decision.dispatch) | set(decision.waiting) == set(jobs)
    assert not set(decision.dispatch) & set(decision.waiting)
    assert all(reason.startswith("waiting: ") for reason in decision.waiting.values())
    dispatched = [jobs[i] for i in decision.dispatch]
    for job in dispatched:
        assert job.queue_id in views and views[job.queue_id].reachable, "job of an unreachable scheduler"
    order = sorted(dispatched, key=lambda p: (p.seq, p.id))
    if snap.policy is Policy.BEST_EFFORT:
        hp = [p for p in order if p.queue_id == snap.high_priority]
        assert dispatched == hp + [p for p in order if p.queue_id != snap.high_priority]
    else:
        assert dispatched == order
    if snap.policy is Policy.EXCLUSIVE and dispatched:
        queues = {p.queue_id for p in dispatched}
        assert len(queues) == 1, "exclusive dispatched to two schedulers"
        busy = {q for q, v in views.items() if v.in_flight + v.foreign_active > 0}
        assert busy <= queues, "exclusive dispatched while another scheduler is in flight"


@pytest.mark.parametrize("seed", range(400))
def test_random_snapshot_invariants(seed: int) -> None:
    rng = random.Random(seed)
    snap = random_snapshot(rng)
    decision = decide(snap, now=float(seed))
    check_invariants(snap, decision)
    assert decide(snap, now=float(seed)) == decision
