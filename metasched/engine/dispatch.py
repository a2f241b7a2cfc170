"""Act: dispatch. Mark, submit, record; exactly once.

1. **Mark.** The jobs the policy chose are committed DISPATCHING (each counts a dispatch attempt) in one fenced
   transaction, each only if it is still at the version the decision was made on: an edit, hold or cancel
   that came after the cycle read the job wins, and the job is decided again next cycle.
2. **Submit.** Per scheduler, the jobs of one owner go several per round trip (one sudo); up to
   PARALLEL_BATCHES round trips in flight per scheduler. Right before each round trip, jobs whose cancel was
   requested meanwhile are cancelled instead (they were never sent), and the round trip is sent only while
   our lease is valid. It runs inside the node's fence (fence.py): if another holder has taken over since,
   the node refuses it and nothing is submitted.
3. **Record.** Each job is recorded as soon as its scheduler answered (a batch's answers every RECORD_EVERY
   seconds), as a fact on the job as it is then (a cancel request that came meanwhile does not undo a
   submit: the job is adopted and cancelled in its scheduler next cycle). Only a definite answer is one: a
   native id, or the scheduler's refusal. A round trip that timed out, broke, or printed something we cannot
   read is *unknown*: the job stays DISPATCHING and is looked up by its tag once the fence says no attempt
   can still land (reconcile.py), never guessed.
"""
from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

from .. import lifecycle
from ..backends.base import Backend, BatchAnswers, SubmitRefused, command_line
from ..db.repository import Repository
from ..model import Job, JobStatus, Queue
from ..transport import Result
from . import fence
from .fanout import Call, FanOut, reason
from .lease import Lease, LeaseLost
from .reconcile import Recovery
from .values import CycleReport

log = logging.getLogger("metasched.engine")

ACTOR = "poller"
BATCH_MAX = 100          # jobs submitted per round trip to a scheduler's master
BATCH_BYTES = 96 * 1024  # and at most this much command line (well under ARG_MAX and sshd's limits)
RECORD_EVERY = 0.05      # seconds between recordings of the jobs a running batch has already answered
PARALLEL_BATCHES = 3     # round trips in flight at once per scheduler (channels of one SSH connection)


@dataclass(frozen=True)
class Outcome:
    """One job's answer. native: its id in the scheduler. Else problem, and whether the submit may have
    reached the scheduler (unknown) or surely did not (refused by the scheduler, or never sent)."""
    job: Job
    native: str | None = None
    problem: str | None = None
    unknown: bool = False
    sent: bool = True


def outcome_of(backend: Backend, job: Job, answer: tuple[int, str, str] | None, res: Result | None) -> Outcome:
    """The outcome of one job from its framed answer (None: it never answered); res: the round trip."""
    if answer is None:
        if res is not None and res.error is not None:
            return Outcome(job, problem=res.error, unknown=True)
        return Outcome(job, problem="the round trip ended before this job's answer", unknown=True)
    rc, out, err = answer
    try:
        return Outcome(job, native=backend.parse_submit(job, rc, out, err))
    except SubmitRefused as exc:
        return Outcome(job, problem=str(exc) or err.strip() or f"exit status {rc}")
    except Exception as exc:   # it may exist: looked up by its tag once no attempt can land
        return Outcome(job, problem=reason(exc), unknown=True)


class Dispatcher:
    def __init__(self, *, lease: Lease, repo: Repository, fan: FanOut, transports: dict,
                 backends: dict[int, Backend], run_as: Callable[[Job, int], str | None], installation: str,
                 recovery: Recovery, now: Callable[[], str], margin: float):
        self.lease, self.repo, self.fan = lease, repo, fan
        self.transports, self.backends, self.run_as = transports, backends, run_as
        self.installation, self.recovery, self.now, self.margin = installation, recovery, now, margin

    # -- 1. mark ----------------------------------------------------------------------------------
    def mark(self, jobs: list[Job], qmap: dict[int, Queue]) -> list[Job]:
        if not jobs or not self.lease.valid(self.margin):
            return []
        now = self.now()
        marked = []
        with self.lease.fenced():
            for job in jobs:
                q = qmap[job.queue_id]
                fresh = lifecycle.transition(self.repo, job, JobStatus.DISPATCHING, actor=ACTOR,
                                             reason=f"dispatching to {q.name}", now=now, attempt=1)
                if fresh is not None:
                    marked.append(fresh)
        return marked

    # -- 2. submit --------------------------------------------------------------------------------
    def batches(self, jobs: list[Job], q: Queue):
        """Consecutive jobs of one owner, at most BATCH_MAX jobs or BATCH_BYTES of command line each."""
        batch: list[Job] = []
        owner, size = None, 0
        for job in jobs:
            try:
                run_as = self.run_as(job, q.master_node_id)
            except SubmitRefused:
                run_as = job.owner      # refused again, with its reason, in submit_batch
            cost = (len(job.path) + sum(len(o) for o in job.options) + len(job.pwd) + len(job.name) + 300
                    + job.spec.env_size() + sum(len(a) for a in job.spec.native))
            if batch and (run_as != owner or len(batch) >= BATCH_MAX or size + cost > BATCH_BYTES):
                yield owner, batch
                batch, size = [], 0
            batch.append(job)
            owner, size = run_as, size + cost
        if batch:
            yield owner, batch

    def dispatch(self, jobs: list[Job], qmap: dict[int, Queue], report: CycleReport) -> None:
        """Mark, submit and record ``jobs`` (in the policy's order). LeaseLost when another holder took
        over meanwhile (what was sent before is recorded by the next holder, looked up by tag)."""
        marked = self.mark(jobs, qmap)
        if not marked:
            return
        per_queue: dict[int, list[Job]] = defaultdict(list)
        for job in marked:
            per_queue[job.queue_id].append(job)
        lock = threading.Lock()
        lost: list[LeaseLost] = []

        def record(q: Queue, outcomes: list[Outcome]) -> None:
            with lock:
                if lost:
                    raise lost[0]
                try:
                    self.record(q, outcomes, report)
                except LeaseLost as exc:
                    lost.append(exc)
                    raise

        def one(q: Queue, run_as: str | None, batch: list[Job]) -> Result:
            try:
                return self.submit_batch(q, run_as, batch, record, report, lost)
            except LeaseLost:
                return Result(None, error="lease lost")

        calls = [Call(qid, lambda q=qmap[qid], b=b, u=u: one(q, u, b))
                 for qid in per_queue for u, b in self.batches(per_queue[qid], qmap[qid])]
        self.fan.run(calls, per_key=PARALLEL_BATCHES)
        if lost:
            raise lost[0]

    def submit_batch(self, q: Queue, run_as: str | None, jobs: list[Job], record, report: CycleReport,
                     lost: list) -> Result:
        """One round trip. record(q, outcomes) is called every RECORD_EVERY seconds with the answers that
        arrived meanwhile and once at the end; every job is in exactly one call."""
        if lost or not self.lease.valid(self.margin):
            # another holder may act now: these stay DISPATCHING, never sent; whoever holds the lease next
            # raises the fence and dispatches them again
            log.warning("lease lost or about to expire: %d jobs for %s not sent", len(jobs), q.name)
            return Result(None, error="not sent")
        jobs = self.drop_cancelled(q, jobs)
        backend = self.backends[q.id]
        outcomes, ready, lines = [], [], []
        for job in jobs:
            try:
                self.run_as(job, q.master_node_id)
                lines.append(backend.batch_line(job))
                ready.append(job)
            except Exception as exc:           # this job cannot be submitted at all: refused, the others go on
                outcomes.append(Outcome(job, problem=reason(exc) if not isinstance(exc, (SubmitRefused, ValueError))
                                        else str(exc)))
        if not ready:
            if outcomes:
                record(q, outcomes)
            return Result(0)
        single = len(ready) == 1
        try:
            inner = backend.submit_argv(ready[0], run_as) if single else backend.batch_submit_argv(lines, run_as)
            argv = fence.submit_argv(self.installation, self.lease.epoch, inner)
        except Exception as exc:
            record(q, outcomes + [Outcome(j, problem=reason(exc)) for j in ready])
            return Result(0)
        stream, done, guard, over = BatchAnswers(len(ready)), set(), threading.Lock(), threading.Event()

        def on_output(text: str) -> None:
            if single:
                return
            with guard:
                for i, answer in stream.feed(text):
                    if i not in done:
                        done.add(i)
                        outcomes.append(outcome_of(backend, ready[i], answer, None))

        def flush() -> None:
            with guard:
                got = outcomes[:]
                outcomes.clear()
            if got:
                try:
                    record(q, got)
                except LeaseLost:
                    raise
                except Exception:            # e.g. the database busy for too long: try again at the end
                    log.exception("recording %d dispatched jobs failed; retrying at the end of the round trip",
                                  len(got))
                    with guard:
                        outcomes[:0] = got

        def flusher() -> None:
            while not over.wait(RECORD_EVERY):
                try:
                    flush()
                except LeaseLost:
                    return

        recorder = threading.Thread(target=flusher, name="dispatch-record", daemon=True)
        recorder.start()
        try:
            res = self.transports[q.master_node_id].run(command_line(argv), on_output=on_output)
        finally:
            over.set()
            recorder.join()
        refused_by_fence = fence.fenced_out(res.stderr) if res.error is None else None
        with guard:
            if refused_by_fence is not None and not done:
                # nothing ran: the node's fence refused our epoch (or could not be taken)
                outcomes.extend(Outcome(j, problem=f"not submitted: {refused_by_fence}", sent=False)
                                for j in ready)
            elif single:
                answer = (res.rc, res.stdout, res.stderr) if res.error is None else None
                outcomes.append(outcome_of(backend, ready[0], answer, res))
            else:
                # every framed answer went through on_output; a job without one never reported, unless nothing
                # ran at all (sudo refused, no shell): then that reason holds for every job of the round trip
                unframed = (res.rc, "", res.stderr) if res.error is None and res.rc != 0 and not done else None
                for i, job in enumerate(ready):
                    if i not in done:
                        outcomes.append(outcome_of(backend, job, unframed, res))
        if outcomes:
            record(q, outcomes)
        return res

    def drop_cancelled(self, q: Queue, jobs: list[Job]) -> list[Job]:
        """Jobs whose cancel was requested after they were marked: cancelled here, never sent."""
        with self.repo.db.read():
            cancelled = self.repo.cancel_requested_among([j.id for j in jobs])
        if not cancelled:
            return jobs
        now = self.now()
        with self.lease.fenced():
            for job in jobs:
                if job.id in cancelled:
                    lifecycle.observed(self.repo, job, JobStatus.CANCELLED, actor=ACTOR, now=now,
                                       reason=f"cancelled before it was submitted to {q.name}")
        return [j for j in jobs if j.id not in cancelled]

    # -- 3. record --------------------------------------------------------------------------------
    def record(self, q: Queue, outcomes: list[Outcome], report: CycleReport) -> None:
        now = self.now()
        backend = self.backends[q.id]
        with self.lease.fenced():
            for o in outcomes:
                job = o.job
                if o.native is not None:
                    new = JobStatus.RUNNING if backend.starts_on_submit else JobStatus.QUEUED
                    verb = "running on" if new is JobStatus.RUNNING else "queued in"
                    lifecycle.observed(self.repo, job, new, actor=ACTOR, now=now, scheduler_job_id=o.native,
                                       reason=f"{verb} {q.name} as {o.native}")
                    report.summary["dispatched"] += 1
                elif o.unknown:
                    # the submit may or may not have reached the scheduler: looked up by tag once the fence
                    # on its master node says no attempt can still land
                    self.recovery.problem[job.id] = o.problem
                    current = self.repo.get_job(job.id)
                    if current is not None and current.status is JobStatus.DISPATCHING:
                        lifecycle.note(self.repo, current, f"dispatch outcome unknown ({o.problem}); it is looked "
                                                           f"up by its tag", actor=ACTOR, now=now)
                    report.job_error("dispatch outcome unknown", job.id, o.problem)
                elif not o.sent:
                    self.recovery.problem[job.id] = o.problem
                    lifecycle.observed(self.repo, job, JobStatus.TO_BE_QUEUED, actor=ACTOR, now=now,
                                       reason=o.problem)
                    report.job_error("not submitted", job.id, o.problem)
                else:
                    lifecycle.observed(self.repo, job, JobStatus.ERROR, actor=ACTOR, now=now,
                                       reason=f"scheduler refused: {o.problem}")
                    report.summary["refused"] += 1
