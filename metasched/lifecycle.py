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
from .model import NO_SPEC, Accounting, Job, JobSpec, JobStatus, JobUsage, can_transition

_TOKEN_ALPHABET = string.ascii_lowercase


def new_token() -> str:
    """The random token a job carries in its native tag (6 lowercase letters, ~3e8 values): see Job.token."""
    return "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(6))


class IllegalTransition(Exception):
    def __init__(self, job: Job, new: JobStatus):
        super().__init__(f"job {job.id}: {job.status.value} -> {new.value} is not allowed")
        self.job, self.new = job, new


def create(repo: Repository, *, name, queue_id, owner, status: JobStatus, path, options, pwd, actor, reason,
           now, spec: JobSpec = NO_SPEC) -> Job:
    job = repo.insert_job(name=name, queue_id=queue_id, owner=owner, status=status, path=path, options=options,
                          pwd=pwd, token=new_token(), now=now, spec=spec)
    repo.insert_job_event(job_id=job.id, old_status=None, new_status=status, actor=actor, reason=reason, now=now)
    return job


def transition(repo: Repository, job: Job, new: JobStatus, *, actor: str, reason: str, now: str,
               scheduler_job_id: str | None = None, exit_code: int | None = None, started_at: str | None = None,
               attempt: bool = False) -> Job | None:
    """Move ``job`` (as the caller read it) to ``new``; None when the job changed since that read.

    A job whose cancel was requested never goes back to our queue: it is cancelled instead."""
    if new is JobStatus.TO_BE_QUEUED and job.cancel_requested:
        new, reason = JobStatus.CANCELLED, f"cancelled before it was dispatched again ({reason})"
    if not can_transition(job.status, new):
        raise IllegalTransition(job, new)
    updated = repo.update_job(id=job.id, version=job.version, status=new, reason=reason, now=now,
                              scheduler_job_id=scheduler_job_id, exit_code=exit_code, started_at=started_at,
                              attempt=int(attempt))
    if updated is not None:
        repo.insert_job_event(job_id=job.id, old_status=job.status, new_status=new, actor=actor, reason=reason,
                              now=now)
    return updated


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
         pwd, spec: JobSpec | None = None) -> Job | None:
    updated = repo.update_job_fields(id=job.id, version=job.version, name=name, queue_id=queue_id, path=path,
                                     options=options, pwd=pwd, now=now, spec=job.spec if spec is None else spec)
    if updated is not None:
        repo.insert_job_event(job_id=job.id, old_status=job.status, new_status=job.status, actor=actor,
                              reason=f"edited: {', '.join(changed)}", now=now)
    return updated
