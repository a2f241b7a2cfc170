"""Reconcile: native states to our transitions. Pure: jobs and status values in, a Plan out; the answers to
the final-state questions in, Changes out. No database, no I/O, no clock (``mono`` is passed in).

Rules:
- A scheduler that did not answer this cycle says nothing: its jobs are left as they are (never guessed).
- A job that left the native queue is final only when the scheduler's accounting (or the job's exit file)
  says how it ended: never "vanished, so COMPLETED".
- A job left DISPATCHING (a crash, a timeout, a takeover) is looked at only once the fence on its master
  node was raised this cycle: no earlier attempt can land any more. Then it is adopted when the scheduler
  lists or remembers it under its tag (id + token + owner), else, once the backend's recovery grace has
  passed without a trace, dispatched again — unless a cancel was requested (then it is CANCELLED: it never
  ran) or it has had poller.max_attempts attempts whose failure a poller saw (then ERROR with the last
  reason). An attempt no poller saw end (the poller that made it was killed or paused past its lease) is the
  service's fault, not the job's: it is dispatched again without counting.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from ..backends.base import Backend, FinalState, NativeState
from ..model import ACTIVE_STATES, Job, JobStatus, Queue
from ..transport import Result
from .fanout import reason
from .values import Change, CycleReport, Plan, Question, QueueStatus


@dataclass
class Recovery:
    """What the engine remembers between cycles about unresolved dispatches (monotonic times)."""
    unseen_since: dict[int, float] = field(default_factory=dict)   # job id -> first settled cycle without a trace
    retry_at: dict[int, float] = field(default_factory=dict)       # job id -> not dispatched again before
    problem: dict[int, str] = field(default_factory=dict)          # job id -> what its last attempt ran into

    def forget(self, job_ids) -> None:
        for jid in job_ids:
            self.unseen_since.pop(jid, None)
            self.retry_at.pop(jid, None)
            self.problem.pop(jid, None)


def reconcile(jobs: list[Job], qmap: dict[int, Queue], statuses: dict[int, QueueStatus],
              unsettled: dict[int, str]) -> Plan:
    """``unsettled``: master node id -> why its fence could not be raised this cycle (absent: raised, or no
    DISPATCHING job there)."""
    plan = Plan()
    for job in jobs:
        if job.status not in ACTIVE_STATES or job.queue_id not in qmap:
            continue
        st = statuses.get(job.queue_id)
        if st is None or not st.ok:
            continue                       # cannot tell this cycle; never guess
        q = qmap[job.queue_id]
        if job.status is JobStatus.DISPATCHING:
            why = unsettled.get(q.master_node_id)
            if why is not None:
                plan.changes.append(Change(job, None, f"dispatch outcome unknown; it is looked up by its tag once "
                                                      f"no earlier attempt can land ({why})"))
                continue
            nj = st.tagged(job)
            if nj is None:
                plan.questions.append(Question(job, by_tag=True))   # maybe it already ran: ask its accounting
                continue
            new = JobStatus.RUNNING if nj.state is NativeState.RUNNING else JobStatus.QUEUED
            plan.changes.append(Change(job, new, f"adopted {q.name} job {nj.native_id} after an interrupted dispatch",
                                       scheduler_job_id=nj.native_id, started_at=nj.start_time))
            adopted = dataclasses.replace(job, status=new, scheduler_job_id=nj.native_id)
            if job.array_spec:
                continue        # its tasks are followed one by one from the next cycle (engine/arrays.py)
            if nj.state in (NativeState.FINISHED, NativeState.ERROR):
                plan.questions.append(Question(adopted, by_tag=False))   # already over: how did it end?
            elif job.cancel_requested:
                plan.cancels.append(adopted)
            continue
        nj = st.listed(job)
        if job.array_spec:
            # an array in its scheduler: its tasks are followed one by one (engine/arrays.py); the array itself
            # ends with them, and a cancel of the whole array is one native cancel
            if job.cancel_requested and nj is not None and nj.state in (NativeState.PENDING, NativeState.RUNNING):
                plan.cancels.append(job)
            continue
        if nj is None or nj.state is NativeState.FINISHED:
            plan.questions.append(Question(job, by_tag=False))
        elif nj.state is NativeState.ERROR:
            plan.changes.append(Change(job, JobStatus.ERROR, f"{q.name} error state: {nj.reason or 'unknown'}"))
            plan.cancels.append(job)            # do not leave it stuck in the scheduler
        elif nj.state is NativeState.RUNNING and job.status is JobStatus.QUEUED:
            plan.changes.append(Change(job, JobStatus.RUNNING, f"running in {q.name}", started_at=nj.start_time))
        if job.cancel_requested and nj is not None and nj.state in (NativeState.PENDING, NativeState.RUNNING):
            plan.cancels.append(job)
    return plan


def backoff(attempts: int, base: float, cap: float = 600.0) -> float:
    """Seconds before attempt ``attempts + 1`` of a dispatch that did not reach its scheduler."""
    return min(cap, base * 2 ** max(0, attempts - 1))


def resolve(questions: list[Question], answers: list[Result], *, qmap: dict[int, Queue],
            backends: dict[int, Backend], recovery: Recovery, mono: float, max_attempts: int,
            retry_base: float, cancelled_by: Callable[[Job], str], report: CycleReport) -> list[Change]:
    """Changes from the answers to the final-state questions. A question whose answer failed, or that a
    parser could not understand, fails that job this cycle (recorded in the report) and nothing else."""
    changes: list[Change] = []
    for question, res in zip(questions, answers):
        job = question.job
        q, backend = qmap[job.queue_id], backends[job.queue_id]
        if res is not None and res.error:
            report.job_error("final-state question", job.id, res.error)
            continue
        try:
            if question.by_tag:
                found = None
                if backend.parse_final_by_tag is not None and res is not None:
                    found = backend.parse_final_by_tag(job, res.rc, res.stdout, res.stderr)
                if found is not None and job.array_spec:
                    # an array that reached its scheduler: adopted; its tasks' ends are asked one by one
                    recovery.forget([job.id])
                    what = f"job {found[0]}" if found[0] else "array, already over,"
                    changes.append(Change(job, JobStatus.QUEUED, f"adopted {q.name} {what} after an interrupted "
                                          f"dispatch", scheduler_job_id=found[0]))
                    continue
                if found is not None:
                    native, fs = found
                    recovery.forget([job.id])
                    ran = dataclasses.replace(job, scheduler_job_id=native) if native is not None else job
                    changes.append(Change(job, JobStatus(fs.status), f"{fs.reason or 'ended'} (adopted after an "
                                          f"interrupted dispatch)", exit_code=fs.exit_code,
                                          scheduler_job_id=native, started_at=fs.started_at,
                                          accounting=accounting(backend, ran, res, report)))
                    continue
                changes.append(_never_arrived(job, q, backend, recovery, mono, max_attempts, retry_base,
                                              cancelled_by))
                continue
            fs: FinalState | None = backend.parse_final(job, res.rc, res.stdout, res.stderr)
        except Exception as exc:   # an answer we did not expect: this job waits, the cycle goes on
            report.job_error("final-state answer", job.id, reason(exc))
            continue
        if fs is not None:
            recovery.forget([job.id])
            status = JobStatus(fs.status)
            if status is JobStatus.CANCELLED and job.cancel_requested:
                why = cancelled_by(job)
            else:
                why = fs.reason or (f"exit code {fs.exit_code}" if fs.exit_code is not None else "ended")
            changes.append(Change(job, status, why, exit_code=fs.exit_code, started_at=fs.started_at,
                                  accounting=accounting(backend, job, res, report)))
            continue
        if job.cancel_requested:
            # cancelled, and the scheduler keeps no record (yet) of how it ended: its accounting may lag
            first = recovery.unseen_since.setdefault(job.id, mono)
            grace = backend.recovery_grace()
            if mono - first >= grace:
                recovery.forget([job.id])
                if job.status is JobStatus.QUEUED and job.started_at is None:
                    why = f"{cancelled_by(job)} before it started"
                else:
                    why = f"{cancelled_by(job)}; {q.name} kept no record of how it ended"
                changes.append(Change(job, JobStatus.CANCELLED, why))
                continue
        changes.append(Change(job, None, f"not listed by {q.name}; waiting for it to report how the job ended"))
    return changes


def accounting(backend: Backend, job: Job, res: Result, report: CycleReport):
    """What the job used, from the answer that ended it. An accounting record the parser cannot read costs
    that job its accounting (recorded in the report), never its end state nor anything else."""
    try:
        return backend.parse_accounting(job, res.rc, res.stdout, res.stderr)
    except Exception as exc:
        report.job_error("accounting answer", job.id, reason(exc))
        return None


def _never_arrived(job: Job, q: Queue, backend: Backend, recovery: Recovery, mono: float, max_attempts: int,
                   retry_base: float, cancelled_by) -> Change:
    """A settled dispatch the scheduler neither lists nor remembers (after the recovery grace: its accounting
    may lag): it never got the job, and no earlier attempt can still land."""
    first = recovery.unseen_since.setdefault(job.id, mono)
    grace = backend.recovery_grace()
    if mono - first < grace:
        return Change(job, None, f"interrupted dispatch, not found in {q.name}: waiting up to {grace:g} s for "
                                 f"its accounting before dispatching it again")
    recovery.unseen_since.pop(job.id, None)
    problem = recovery.problem.pop(job.id, None)
    if job.cancel_requested:
        return Change(job, JobStatus.CANCELLED, f"{cancelled_by(job)} (it never reached {q.name})", fact=False)
    if problem is None:
        # No poller saw this attempt end (the one that made it was killed, paused past its lease, or
        # restarted): it is the service's fault, not the job's, and does not count against max_attempts.
        return Change(job, JobStatus.TO_BE_QUEUED, f"the poller that dispatched it stopped before the answer; "
                                                   f"it never reached {q.name}: dispatching again", fact=False,
                      attempt=-1)
    last = problem
    if job.attempts >= max_attempts:
        return Change(job, JobStatus.ERROR, f"gave up after {job.attempts} dispatch attempts; the last: {last}",
                      fact=False)
    recovery.retry_at[job.id] = mono + backoff(job.attempts, retry_base)
    return Change(job, JobStatus.TO_BE_QUEUED, f"dispatch attempt {job.attempts} did not reach {q.name} "
                                               f"({last}); dispatching again", fact=False)
