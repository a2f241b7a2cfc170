"""Domain values shared by every layer: job states, their allowed transitions, plain records.

Nothing here does I/O. The web layer serialises these, the repository builds them from rows,
the policies and backends consume them.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


class JobStatus(str, enum.Enum):
    TO_BE_QUEUED = "TO_BE_QUEUED"   # waiting in our queue
    HELD = "HELD"                   # waiting in our queue, not eligible until released
    DISPATCHING = "DISPATCHING"     # committed as being submitted; the native submit may or may not have happened
    QUEUED = "QUEUED"               # in the scheduler's queue
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    ERROR = "ERROR"
    CANCELLED = "CANCELLED"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES

    @property
    def dispatched(self) -> bool:
        return self in (JobStatus.DISPATCHING, JobStatus.QUEUED, JobStatus.RUNNING)


FINAL_STATES = frozenset({JobStatus.COMPLETED, JobStatus.ERROR, JobStatus.CANCELLED})
UNDISPATCHED_STATES = frozenset({JobStatus.TO_BE_QUEUED, JobStatus.HELD})
ACTIVE_STATES = frozenset({JobStatus.DISPATCHING, JobStatus.QUEUED, JobStatus.RUNNING})

S = JobStatus
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.TO_BE_QUEUED: frozenset({S.HELD, S.DISPATCHING, S.CANCELLED, S.ERROR}),
    S.HELD: frozenset({S.TO_BE_QUEUED, S.CANCELLED}),
    S.DISPATCHING: frozenset({S.QUEUED, S.RUNNING, S.COMPLETED, S.ERROR, S.CANCELLED, S.TO_BE_QUEUED}),
    S.QUEUED: frozenset({S.RUNNING, S.COMPLETED, S.ERROR, S.CANCELLED}),
    S.RUNNING: frozenset({S.COMPLETED, S.ERROR, S.CANCELLED}),
    S.COMPLETED: frozenset(),
    S.ERROR: frozenset(),
    S.CANCELLED: frozenset(),
}
del S


def can_transition(old: JobStatus, new: JobStatus) -> bool:
    return new in TRANSITIONS[old]


class Policy(str, enum.Enum):
    EXCLUSIVE = "exclusive"
    BEST_EFFORT = "best_effort"
    SHARED = "shared"
    DYNAMIC = "dynamic"


class SchedulerType(str, enum.Enum):
    SGE = "sge"
    SLURM = "slurm"
    YARN = "yarn"
    LOCAL = "local"
    SPARK = "spark"


@dataclass(slots=True)      # not frozen: building a page of jobs is ~10% faster; treat it as read-only
class Job:
    id: int
    name: str
    queue_id: int
    owner: str
    status: JobStatus
    path: str
    options: tuple[str, ...] = ()
    pwd: str = "/tmp"
    scheduler_job_id: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    cancel_requested: bool = False
    created_at: str = ""
    submitted_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    updated_at: str = ""
    version: int = 1
    token: str | None = None        # random, in the native tag: only this database's jobs are ever adopted
    attempts: int = 0               # dispatch attempts so far


@dataclass(frozen=True)
class Queue:
    id: int
    name: str
    type: SchedulerType
    master_node_id: int
    weight: int
    position: int


@dataclass(frozen=True)
class Node:
    id: int
    address: str
    port: int
    position: int
    is_master: bool
    reachable: bool | None = None
    last_seen: str | None = None
    last_error: str | None = None
    load: tuple[float, float, float] | None = None
    ncpus: int | None = None
    enforcement: dict = field(default_factory=dict)
