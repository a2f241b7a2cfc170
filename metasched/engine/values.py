"""Plain values passed between the phases of a cycle (no I/O, no database)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from ..backends.base import NativeJob
from ..model import Accounting, Job, JobStatus


@dataclass(frozen=True)
class Tick:
    """The cycle's clock readings, taken once: wall (UTC seconds, for rows and display), mono (the host's
    boot-time clock, for every duration and deadline: a wall-clock step never moves it), iso (wall as text)."""
    wall: float
    mono: float
    iso: str


@dataclass
class QueueStatus:
    """What one scheduler's batched status call said this cycle."""
    ok: bool
    error: str | None = None
    by_native: dict[str, NativeJob] = field(default_factory=dict)
    by_our_id: dict[int, list[NativeJob]] = field(default_factory=dict)
    foreign: list[NativeJob] = field(default_factory=list)

    def tagged(self, job: Job) -> NativeJob | None:
        """The native job carrying this job's tag (id and token) and owned by its owner, if listed."""
        return next((nj for nj in self.by_our_id.get(job.id, ()) if nj.is_of(job)), None)

    def listed(self, job: Job) -> NativeJob | None:
        """The native job with this job's native id, unless it is tagged as another job (a reused pid)."""
        nj = self.by_native.get(job.scheduler_job_id or "")
        if nj is not None and nj.our_id is not None and not nj.is_of(job):
            return None
        return nj


@dataclass(frozen=True)
class Change:
    """One thing the cycle learned about a job, written later in one fenced transaction.

    new None: no transition, only a note (with an event when it changed). fact True: an observation of the
    outside world (applied to the job as it is when written, if it is still in job.status); False: a
    decision (written only if the job is still at the version it was made on)."""
    job: Job
    new: JobStatus | None
    reason: str
    exit_code: int | None = None
    started_at: str | None = None
    scheduler_job_id: str | None = None
    fact: bool = True
    accounting: Accounting | None = None     # with a final state: what the scheduler reported the job used
    attempt: int = 0                         # with a decision: added to the job's count of dispatch attempts


@dataclass(frozen=True)
class Question:
    """A final-state question for a job's scheduler: by native id, or by tag for an unresolved dispatch."""
    job: Job
    by_tag: bool


@dataclass
class Plan:
    """What reconcile decided from the status calls: changes, questions to ask, native cancels to send."""
    changes: list[Change] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)
    cancels: list[Job] = field(default_factory=list)


@dataclass
class CycleReport:
    started_at: str
    duration_ms: float = 0.0
    summary: dict = field(default_factory=lambda: defaultdict(int))
    errors: dict = field(default_factory=dict)
    shares: dict = field(default_factory=dict)
    job_errors: dict = field(default_factory=dict)    # (what, message) -> job ids

    def error(self, key: str, message: str) -> None:
        """A node's or a scheduler's problem this cycle."""
        self.errors[key] = (message or "unknown error")[:300]

    def job_error(self, what: str, job_id: int, message: str) -> None:
        """One job's problem this cycle; summarised per kind and message, not one entry per job."""
        self.job_errors.setdefault((what, (message or "unknown error")[:300]), []).append(job_id)

    def summarised_errors(self, max_messages: int = 20) -> dict[str, str]:
        """The cycle's errors as recorded: nodes and schedulers by name, jobs grouped by message (a cycle
        that failed 300 dispatches the same way records one line, with a few of the job ids)."""
        out = dict(self.errors)
        groups = sorted(self.job_errors.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        for (what, message), ids in groups[:max_messages]:
            sample = ", ".join(map(str, ids[:5])) + (", ..." if len(ids) > 5 else "")
            out[f"{what}: {len(ids)} job{'s' if len(ids) != 1 else ''} ({sample})"] = message
        if len(groups) > max_messages:
            out["more job errors"] = f"{len(groups) - max_messages} other messages"
        return out
