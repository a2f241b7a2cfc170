"""Engine.reconcile is pure (no I/O): native states in, changes / final-state questions / cancels out."""
from __future__ import annotations

import pytest

from metasched import config as cfgmod
from metasched.backends.base import NativeJob, NativeState
from metasched.db.core import Database
from metasched.engine import Engine, QueueStatus
from metasched.model import Job, JobStatus, Queue, SchedulerType

CFG = cfgmod.parse({"policy": {"name": "shared"}, "nodes": [{"ip": "127.0.0.1", "transport": "local"}],
                    "schedulers": [{"name": "SGE", "master": 0, "weight": 100}]})
Q = Queue(id=1, name="SGE", type=SchedulerType.SGE, master_node_id=1, weight=100, position=0)


@pytest.fixture
def engine(tmp_path):
    return Engine(Database(str(tmp_path / "db.sqlite3")), CFG, transports={})


def job(status: JobStatus, native: str | None = None, **kw) -> Job:
    return Job(id=7, name="x", queue_id=1, owner="alice", status=status, path="/x", scheduler_job_id=native, **kw)


def listed(*native: NativeJob) -> dict[int, QueueStatus]:
    st = QueueStatus(True)
    for nj in native:
        st.by_native[nj.native_id] = nj
        if nj.our_id is not None:
            st.by_our_id[nj.our_id] = nj
    return {1: st}


def nj(state: NativeState, owner: str = "alice", native: str = "4242") -> NativeJob:
    return NativeJob(native_id=native, our_id=7, owner=owner, name="ms7_x", state=state)


def test_an_interrupted_dispatch_found_running_is_adopted(engine):
    changes, finals, cancels = engine.reconcile([job(JobStatus.DISPATCHING)], {1: Q}, listed(nj(NativeState.RUNNING)))
    assert [(c.new, c.scheduler_job_id) for c in changes] == [(JobStatus.RUNNING, "4242")]
    assert finals == [] and cancels == []


def test_an_interrupted_dispatch_already_over_is_adopted_then_asked_by_its_native_id(engine):
    changes, finals, _ = engine.reconcile([job(JobStatus.DISPATCHING)], {1: Q}, listed(nj(NativeState.FINISHED)))
    assert [(c.new, c.scheduler_job_id) for c in changes] == [(JobStatus.QUEUED, "4242")]
    assert [(f.status, f.scheduler_job_id) for f in finals] == [(JobStatus.QUEUED, "4242")]


def test_a_look_alike_of_another_user_is_not_adopted(engine):
    changes, finals, _ = engine.reconcile([job(JobStatus.DISPATCHING)], {1: Q},
                                          listed(nj(NativeState.RUNNING, owner="mallory")))
    assert changes == [] and [f.scheduler_job_id for f in finals] == [None]   # looked up by tag instead


def test_nothing_is_decided_while_the_scheduler_does_not_answer(engine):
    changes, finals, cancels = engine.reconcile([job(JobStatus.RUNNING, "4242")], {1: Q},
                                                {1: QueueStatus(False, "qstat: timeout")})
    assert (changes, finals, cancels) == ([], [], [])


@pytest.mark.parametrize("state, expect_final, expect_cancel", [
    (NativeState.FINISHED, True, False),
    (NativeState.ERROR, False, True),
])
def test_finished_jobs_are_asked_how_they_ended_and_stuck_ones_removed(engine, state, expect_final, expect_cancel):
    changes, finals, cancels = engine.reconcile([job(JobStatus.RUNNING, "4242")], {1: Q}, listed(nj(state)))
    assert bool(finals) is expect_final and bool(cancels) is expect_cancel
    if state is NativeState.ERROR:
        assert changes[0].new is JobStatus.ERROR


def test_a_vanished_job_is_never_finished_by_reconcile_alone(engine):
    changes, finals, _ = engine.reconcile([job(JobStatus.RUNNING, "4242")], {1: Q}, listed())
    assert changes == [] and [f.id for f in finals] == [7]     # its scheduler's accounting decides
