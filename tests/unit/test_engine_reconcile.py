"""Reconcile is pure (no database, no I/O): native states in, changes / final-state questions / cancels out;
final-state answers in, end states or recovery decisions out."""
from __future__ import annotations

import pytest

from metasched.backends.base import NativeJob, NativeState
from metasched.backends.sge import GridEngineBackend
from metasched.engine.reconcile import Recovery, backoff, reconcile, resolve
from metasched.engine.values import CycleReport, QueueStatus
from metasched.model import Job, JobStatus, Queue
from metasched.transport import Result

Q = Queue(id=1, name="SGE", type="sge", master_node_id=1, weight=100, position=0)
QMAP = {1: Q}


def job(status: JobStatus, native: str | None = None, **kw) -> Job:
    kw.setdefault("token", "abcdef")
    return Job(id=7, name="x", queue_id=1, owner="alice", status=status, path="/x", scheduler_job_id=native, **kw)


def listed(*native: NativeJob) -> dict[int, QueueStatus]:
    st = QueueStatus(True)
    for nj in native:
        st.by_native[nj.native_id] = nj
        if nj.our_id is not None:
            st.by_our_id.setdefault(nj.our_id, []).append(nj)
    return {1: st}


def nj(state: NativeState, owner: str = "alice", native: str = "4242", token: str | None = "abcdef",
       our_id: int = 7) -> NativeJob:
    return NativeJob(native_id=native, our_id=our_id, our_token=token, owner=owner, name=f"ms7-{token}_x",
                     state=state)


def test_an_interrupted_dispatch_found_running_is_adopted():
    plan = reconcile([job(JobStatus.DISPATCHING)], QMAP, listed(nj(NativeState.RUNNING)), {})
    assert [(c.new, c.scheduler_job_id) for c in plan.changes] == [(JobStatus.RUNNING, "4242")]
    assert plan.questions == [] and plan.cancels == []


def test_an_interrupted_dispatch_already_over_is_adopted_then_asked_by_its_native_id():
    plan = reconcile([job(JobStatus.DISPATCHING)], QMAP, listed(nj(NativeState.FINISHED)), {})
    assert [(c.new, c.scheduler_job_id) for c in plan.changes] == [(JobStatus.QUEUED, "4242")]
    assert [(q.job.status, q.job.scheduler_job_id, q.by_tag) for q in plan.questions] == [
        (JobStatus.QUEUED, "4242", False)]


@pytest.mark.parametrize("native", [
    nj(NativeState.RUNNING, owner="mallory"),        # anyone can name a job like ours
    nj(NativeState.RUNNING, token="zzzzzz"),         # another installation's job 7, or a wiped database's
    nj(NativeState.RUNNING, token=None),             # the old tag without a token
])
def test_only_this_very_job_is_adopted(native):
    plan = reconcile([job(JobStatus.DISPATCHING)], QMAP, listed(native), {})
    assert plan.changes == [] and [(q.job.id, q.by_tag) for q in plan.questions] == [(7, True)]


def test_a_job_of_an_older_version_is_recognised_by_the_old_tag():
    plan = reconcile([job(JobStatus.DISPATCHING, token=None)], QMAP, listed(nj(NativeState.PENDING, token=None)), {})
    assert [(c.new, c.scheduler_job_id) for c in plan.changes] == [(JobStatus.QUEUED, "4242")]


def test_an_unsettled_dispatch_is_left_alone_until_its_fence_is_raised():
    plan = reconcile([job(JobStatus.DISPATCHING)], QMAP, listed(), {1: "an earlier submit attempt still runs"})
    assert plan.questions == [] and [c.new for c in plan.changes] == [None]
    assert "still runs" in plan.changes[0].reason


def test_nothing_is_decided_while_the_scheduler_does_not_answer():
    plan = reconcile([job(JobStatus.RUNNING, "4242")], QMAP, {1: QueueStatus(False, "qstat: timeout")}, {})
    assert (plan.changes, plan.questions, plan.cancels) == ([], [], [])


@pytest.mark.parametrize("state, expect_question, expect_cancel", [
    (NativeState.FINISHED, True, False),
    (NativeState.ERROR, False, True),
])
def test_finished_jobs_are_asked_how_they_ended_and_stuck_ones_removed(state, expect_question, expect_cancel):
    plan = reconcile([job(JobStatus.RUNNING, "4242")], QMAP, listed(nj(state)), {})
    assert bool(plan.questions) is expect_question and bool(plan.cancels) is expect_cancel
    if state is NativeState.ERROR:
        assert plan.changes[0].new is JobStatus.ERROR


def test_a_vanished_job_is_never_finished_by_reconcile_alone():
    plan = reconcile([job(JobStatus.RUNNING, "4242")], QMAP, listed(), {})
    assert plan.changes == [] and [q.job.id for q in plan.questions] == [7]   # its scheduler's accounting decides


# -- resolve ----------------------------------------------------------------------------------------

def resolve_one(j, answer, recovery, mono, by_tag=True, max_attempts=3, report=None):
    from metasched.engine.values import Question
    return resolve([Question(j, by_tag)], [answer], qmap=QMAP, backends={1: GridEngineBackend({"recovery_grace": 30})},
                   recovery=recovery, mono=mono, max_attempts=max_attempts, retry_base=10,
                   cancelled_by=lambda j: "cancelled by alice", report=report or CycleReport(started_at="t"))


NOT_FOUND = Result(1, "", "error: job name ms7-abcdef_x not found\n")


def test_a_settled_dispatch_without_a_trace_is_dispatched_again_only_after_the_grace():
    rec = Recovery()
    j = job(JobStatus.DISPATCHING, attempts=1)
    first = resolve_one(j, NOT_FOUND, rec, mono=100.0)
    assert [c.new for c in first] == [None] and "waiting up to 30 s" in first[0].reason
    rec.problem[7] = "command timed out after 30s"
    again = resolve_one(j, NOT_FOUND, rec, mono=131.0)
    assert [(c.new, c.fact, c.attempt) for c in again] == [(JobStatus.TO_BE_QUEUED, False, 0)]
    assert rec.retry_at[7] == 131.0 + backoff(1, 10)


def test_a_cancel_requested_while_dispatching_wins_over_a_new_attempt():
    rec = Recovery()
    j = job(JobStatus.DISPATCHING, attempts=1, cancel_requested=True)
    resolve_one(j, NOT_FOUND, rec, mono=0.0)
    out = resolve_one(j, NOT_FOUND, rec, mono=60.0)
    assert [c.new for c in out] == [JobStatus.CANCELLED] and "never reached SGE" in out[0].reason


def test_after_max_attempts_the_job_ends_in_error_with_the_last_problem():
    rec = Recovery(problem={7: "command timed out after 30s"})
    j = job(JobStatus.DISPATCHING, attempts=3)
    resolve_one(j, NOT_FOUND, rec, mono=0.0)
    out = resolve_one(j, NOT_FOUND, rec, mono=60.0)
    assert [c.new for c in out] == [JobStatus.ERROR]
    assert out[0].reason == "gave up after 3 dispatch attempts; the last: command timed out after 30s"


def test_an_attempt_no_poller_saw_end_is_dispatched_again_without_counting():
    """Holders killed or paused mid-dispatch three times (max_attempts 3): the job did nothing wrong. It is
    dispatched again, and its count of attempts goes back down (CI, 2026-12-01: 36 such jobs ended ERROR)."""
    rec = Recovery()                                # a new holder: it did not see the attempt end
    j = job(JobStatus.DISPATCHING, attempts=3)
    resolve_one(j, NOT_FOUND, rec, mono=0.0)
    out = resolve_one(j, NOT_FOUND, rec, mono=60.0)
    assert [(c.new, c.fact, c.attempt) for c in out] == [(JobStatus.TO_BE_QUEUED, False, -1)]
    assert "stopped before the answer" in out[0].reason and 7 not in rec.retry_at


def test_an_answer_nobody_can_parse_fails_that_job_only():
    report = CycleReport(started_at="t")
    j = job(JobStatus.RUNNING, "18_2")             # not a Grid Engine job number
    out = resolve_one(j, Result(0, "garbage", ""), Recovery(), mono=0.0, by_tag=False, report=report)
    assert [c.new for c in out] == [None]           # waiting for an answer it understands
    assert backoff(1, 10) == 10 and backoff(3, 10) == 40 and backoff(30, 10) == 600


def test_a_cancelled_job_accounting_does_not_know_waits_the_grace_before_it_is_cancelled():
    """qacct's records lag: a job that ran and was cancelled must not be taken for one that never started."""
    rec = Recovery()
    not_found = Result(1, "", "error: job id 4242 not found\n")
    ran = job(JobStatus.RUNNING, "4242", cancel_requested=True, started_at="2026-12-01T00:00:00Z")
    assert [c.new for c in resolve_one(ran, not_found, rec, mono=0.0, by_tag=False)] == [None]
    out = resolve_one(ran, not_found, rec, mono=31.0, by_tag=False)
    assert [(c.new, c.reason) for c in out] == [(JobStatus.CANCELLED, "cancelled by alice; SGE kept no record of "
                                                                      "how it ended")]
    pending = job(JobStatus.QUEUED, "4242", cancel_requested=True)
    resolve_one(pending, not_found, rec, mono=100.0, by_tag=False)
    out = resolve_one(pending, not_found, rec, mono=131.0, by_tag=False)
    assert [(c.new, c.reason) for c in out] == [(JobStatus.CANCELLED, "cancelled by alice before it started")]
