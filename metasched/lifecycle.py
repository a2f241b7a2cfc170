"""The one writer of job changes: every state change, from the API and from the poller, goes through here.

A change is written in the caller's transaction (``db.write()`` for the API, the lease-fenced transaction for
the poller) as one versioned UPDATE plus its event row:

- :func:`transition` checks that the move is allowed (``model.TRANSITIONS``) and writes it only if the job is
  still at the version the decision was made on (``UPDATE ... WHERE id = ? AND version = ?``). Zero rows means
  someone else moved first: the caller re-reads and decides again; nothing is ever overwritten.
- :func:`observed` records a fact learned from a scheduler (a submit's answer, an end state) on the job as it
  is *now*: it re-reads the row inside the same transaction and applies the fact if the job is still in the
  state the fact is about (a cancel request that arrived meanwhile does not make the scheduler's answer
  untrue).
- A cancel request wins: a job with ``cancel_requested`` that would go back to our queue is cancelled instead.

Every event row gets an id that only grows (``job_events`` is AUTOINCREMENT): it is the outbox that later
readers (webhooks, streams, the dashboard) follow with a cursor.
"""
from __future__ import annotations

import dataclasses
import secrets
import string

from .db.repository import Repository
from .model import (NO_SPEC, TASK_TRANSITIONS, Accounting, ArraySpec, ArrayTask, can_transition, Job, JobSpec,
                    JobStatus, JobUsage)

_TOKEN_ALPHABET = string.ascii_lowercase


def new_token() -> str:
    """The random token a job carries in its native tag (6 lowercase letters, ~3e8 values): see Job.token.

    One draw of 26**6 values written in base 26 (each letter uniform and independent, as six secrets.choice
    calls gave, which read the kernel's random source six times per submit)."""
    n = secrets.randbelow(26 ** 6)
    out = []
    for _ in range(6):
        n, i = divmod(n, 26)
        out.append(_TOKEN_ALPHABET[i])
    return "".join(out)


class IllegalTransition(Exception):
    def __init__(self, job: Job, new: JobStatus):
        super().__init__(f"job {job.id}: {job.status.value} -> {new.value} is not allowed")
        self.job, self.new = job, new


def create(repo: Repository, *, name, queue_id, owner, status: JobStatus, path, options, pwd, actor, reason,
           now, spec: JobSpec = NO_SPEC, array: ArraySpec | None = None, depends_on=()) -> Job:
    job = repo.insert_job(name=name, queue_id=queue_id, owner=owner, status=status, path=path, options=options,
                          pwd=pwd, token=new_token(), now=now, spec=spec, array_spec=str(array) if array else None,
                          depends_on=depends_on)
    if array is not None:
        repo.insert_array_task(job_id=job.id, tasks=array.indices(), status=JobStatus.TO_BE_QUEUED, now=now)
    repo.insert_job_event(job_id=job.id, old_status=None, new_status=status, actor=actor, reason=reason, now=now)
    return job


def transition(repo: Repository, job: Job, new: JobStatus, *, actor: str, reason: str, now: str,
               scheduler_job_id: str | None = None, exit_code: int | None = None, started_at: str | None = None,
               attempt: int = 0) -> Job | None:
    """Move ``job`` (as the caller read it) to ``new``; None when the job changed since that read.
    ``attempt`` is added to the job's count of dispatch attempts (1: a new one; -1: one that does not count).

    A job whose cancel was requested never goes back to our queue: it is cancelled instead."""
    if new is JobStatus.TO_BE_QUEUED and job.cancel_requested:
        new, reason = JobStatus.CANCELLED, f"cancelled before it was dispatched again ({reason})"
    if not can_transition(job.status, new):
        raise IllegalTransition(job, new)
    updated = repo.update_job(id=job.id, version=job.version, status=new, reason=reason, now=now,
                              scheduler_job_id=scheduler_job_id, exit_code=exit_code, started_at=started_at,
                              attempt=attempt)
    if updated is not None:
        repo.insert_job_event(job_id=job.id, old_status=job.status, new_status=new, actor=actor, reason=reason,
                              now=now)
        if updated.array_spec:
            _array_follows(repo, job.status, updated, reason, now)
    return updated


def _array_follows(repo: Repository, old: JobStatus, job: Job, reason: str, now: str) -> None:
    """An array's tasks follow the array as a whole: submitted (its waiting tasks are in the scheduler's queue
    now), or ended without them (never submitted, or given up on: its open tasks end the same way)."""
    if job.status in (JobStatus.QUEUED, JobStatus.RUNNING) and old is JobStatus.DISPATCHING:
        repo.move_array_tasks(job_id=job.id, from_states=[JobStatus.TO_BE_QUEUED], status=JobStatus.QUEUED,
                              reason=reason, now=now)
    elif job.status.final:
        repo.move_array_tasks(job_id=job.id, from_states=[JobStatus.TO_BE_QUEUED, JobStatus.HELD,
                                                          JobStatus.QUEUED, JobStatus.RUNNING],
                              status=job.status, reason=reason, now=now)


def observed(repo: Repository, job: Job, new: JobStatus, *, actor: str, reason: str, now: str,
             accounting: Accounting | None = None, **fields) -> Job | None:
    """Record what a scheduler said about ``job`` on the job as it is now (re-read in this transaction), if it
    is still in the state the observation is about; None when it is not (it moved on meanwhile).

    A final state is recorded with the job's accounting: what the scheduler reported (``accounting``),
    completed by the node agents' measurements while it ran for the fields the scheduler does not report."""
    current = repo.get_job(job.id)
    if current is None or current.status is not job.status:
        return None
    if new is current.status:
        return current
    if not can_transition(current.status, new):
        raise IllegalTransition(current, new)
    updated = transition(repo, current, new, actor=actor, reason=reason, now=now, **fields)
    if updated is not None and updated.status.final:
        acct = final_accounting(accounting, repo.get_job_usage(job.id))
        if acct is not None:
            repo.record_job_accounting(job.id, acct)
            updated = dataclasses.replace(updated, accounting=acct)
    return updated


def final_accounting(reported: Accounting | None, usage: JobUsage | None) -> Accounting | None:
    """The scheduler's record first; the agents' measurements (CPU time, peak memory, where its processes
    ran) only for what it leaves out. None when neither knows anything (a job that never ran)."""
    measured = None if usage is None else Accounting.of(
        "agent", cpu_seconds=usage.cpu_seconds, max_rss_bytes=usage.max_rss_bytes,
        nodes=",".join(usage.nodes) or None)
    acct = reported.completed_by(measured) if reported is not None else measured
    return acct if acct is not None and (acct.reported() or acct.extra) else None


def note(repo: Repository, job: Job, reason: str, *, actor: str | None = None, now: str | None = None) -> bool:
    """A note on a job without a state change (why it waits, what the poller is waiting for). With ``actor``,
    a changed note is also an event. False when the note was already there or the job changed meanwhile."""
    changed = repo.note_job(id=job.id, version=job.version, reason=reason)
    if changed and actor is not None:
        repo.insert_job_event(job_id=job.id, old_status=job.status, new_status=job.status, actor=actor,
                              reason=reason, now=now)
    return changed


def request_cancel(repo: Repository, job: Job, *, actor: str, now: str) -> Job | None:
    """Ask the poller to cancel a dispatched job (in its scheduler, or before its submit when it can)."""
    updated = repo.request_cancel(id=job.id, version=job.version, now=now)
    if updated is not None:
        repo.insert_job_event(job_id=job.id, old_status=job.status, new_status=job.status, actor=actor,
                              reason=f"cancel requested by {actor}", now=now)
    return updated


def edit(repo: Repository, job: Job, *, actor: str, now: str, changed: list[str], name, queue_id, path, options,
         pwd, spec: JobSpec | None = None, depends_on=None) -> Job | None:
    updated = repo.update_job_fields(id=job.id, version=job.version, name=name, queue_id=queue_id, path=path,
                                     options=options, pwd=pwd, now=now, spec=job.spec if spec is None else spec,
                                     depends_on=job.depends_on if depends_on is None else depends_on)
    if updated is not None:
        repo.insert_job_event(job_id=job.id, old_status=job.status, new_status=job.status, actor=actor,
                              reason=f"edited: {', '.join(changed)}", now=now)
    return updated


# -- array tasks (issue 16): written like jobs, each change a versioned UPDATE plus its event ---------------

class IllegalTaskTransition(Exception):
    def __init__(self, task: ArrayTask, new: JobStatus):
        super().__init__(f"task {task.ref}: {task.status.value} -> {new.value} is not allowed")
        self.task, self.new = task, new


def task_transition(repo: Repository, task: ArrayTask, new: JobStatus, *, actor: str, reason: str, now: str,
                    native_id: str | None = None, exit_code: int | None = None, started_at: str | None = None,
                    cancel: bool = False) -> ArrayTask | None:
    """Move ``task`` (as the caller read it) to ``new``; None when it changed since that read. ``cancel``
    also marks its cancel as requested (a task cancelled before its array was submitted: if the scheduler
    lists it later, the poller cancels it there)."""
    if new not in TASK_TRANSITIONS[task.status]:
        raise IllegalTaskTransition(task, new)
    updated = repo.update_array_task(job_id=task.job_id, task=task.task, version=task.version, status=new,
                                     reason=reason, now=now, native_id=native_id, exit_code=exit_code,
                                     started_at=started_at, cancel_requested=cancel)
    if updated is not None:
        repo.insert_job_event(job_id=task.job_id, old_status=task.status, new_status=new, actor=actor,
                              reason=reason, now=now, task=task.task)
    return updated


def task_observed(repo: Repository, task: ArrayTask, new: JobStatus, *, actor: str, reason: str, now: str,
                  **fields) -> ArrayTask | None:
    """A fact from the scheduler about a task, applied to the task as it is now if it is still in the state
    the fact is about (or, for an end, in any state it can end from: a hold that arrived meanwhile does not
    make the end untrue)."""
    current = repo.get_array_task(task.job_id, task.task)
    if current is None or current.status.final:
        return None
    if current.status is not task.status and not new.final:
        return None
    if new is current.status:
        return current
    if new not in TASK_TRANSITIONS[current.status]:
        raise IllegalTaskTransition(current, new)
    return task_transition(repo, current, new, actor=actor, reason=reason, now=now, **fields)


def request_task_cancel(repo: Repository, task: ArrayTask, *, actor: str, now: str) -> ArrayTask | None:
    """Ask the poller to cancel a task in its scheduler."""
    updated = repo.request_array_task_cancel(job_id=task.job_id, task=task.task, version=task.version, now=now)
    if updated is not None:
        repo.insert_job_event(job_id=task.job_id, old_status=task.status, new_status=task.status, actor=actor,
                              reason=f"cancel requested by {actor}", now=now, task=task.task)
    return updated


def move_tasks(repo: Repository, job: Job, from_states, new: JobStatus, *, actor: str, reason: str,
               now: str) -> int:
    """Every task of ``job`` in ``from_states`` moves to ``new`` at once (hold or release of a whole array in
    its scheduler's queue); one event on the job says how many."""
    n = repo.move_array_tasks(job_id=job.id, from_states=list(from_states), status=new, reason=reason, now=now)
    if n:
        repo.insert_job_event(job_id=job.id, old_status=job.status, new_status=job.status, actor=actor,
                              reason=f"{reason} ({n} task{'s' if n != 1 else ''})", now=now)
    return n


def submit_held(repo: Repository, job: Job, *, actor: str, now: str) -> Job | None:
    """An array not dispatched yet, some of whose tasks were held or cancelled, is to be submitted held (qsub -h,
    sbatch --hold, a supervisor waiting for its control file): the poller then releases the others in the
    scheduler, so that none of those starts before it could be held or cancelled there."""
    spec = ArraySpec.parse(job.array_spec, internal=True)
    if spec.held:
        return job
    held = ArraySpec(spec.first, spec.last, spec.step, spec.limit, held=True)
    updated = repo.set_array_spec(id=job.id, version=job.version, array_spec=str(held), now=now)
    if updated is not None:
        repo.insert_job_event(job_id=job.id, old_status=job.status, new_status=job.status, actor=actor,
                              reason="to be submitted held: the poller releases the tasks not held", now=now)
    return updated
