"""Cluster policies: pure functions of a snapshot and ``now`` that return actions.

No I/O, no clock, no database here: the poller builds a :class:`Snapshot`, calls :func:`decide` and
carries out the :class:`Decision`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .model import Policy

MIN_SHARE = 1.0  # percent of CPU a scheduler keeps when the policy starves it (cgroup weights cannot be 0)


@dataclass(frozen=True)
class SchedulerView:
    queue_id: int
    name: str
    weight: int                 # configured 0..100
    reachable: bool             # its master answered the last batched status call
    in_flight: int = 0          # our jobs DISPATCHING, QUEUED or RUNNING in it
    running: int = 0            # of those, RUNNING
    foreign_active: int = 0     # jobs submitted directly to the scheduler (not by us) pending or running


@dataclass(frozen=True)
class PendingJob:
    id: int
    queue_id: int
    seq: int                    # submission order (smaller = older); ties broken by id


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
    shares: dict[int, float] = field(default_factory=dict)        # queue_id -> CPU share in percent (sums to 100)
    node_shares: dict[int, dict[int, float]] = field(default_factory=dict)  # node_id -> queue_id -> percent


def decide(snapshot: Snapshot, now: float) -> Decision:
    raise NotImplementedError("policies are being implemented")
