"""Engine.dispatch against a real shell: a job counts as dispatched as soon as its scheduler answered,
not when the whole round trip (up to a hundred submissions) is over."""
from __future__ import annotations

import shlex
import threading
import time

from metasched import config as cfgmod
from metasched.backends.base import SubmitRefused
from metasched.backends.sge import GridEngineBackend
from metasched.db.core import Database, utcnow
from metasched.db.repository import Repository
from metasched import lifecycle
from metasched.engine import CycleReport, Engine
from metasched.identity import Authority
from metasched.model import JobStatus
from metasched.services import Services
from metasched.transport import LocalTransport

CFG = cfgmod.parse({"policy": {"name": "shared"}, "nodes": [{"ip": "127.0.0.1", "transport": "local"}],
                    "schedulers": [{"name": "SGE", "master": 0, "weight": 100}]})


class GatedBackend(GridEngineBackend):
    """Answers like a batch of qsub would (framed, one native id per job), but the second answer only once
    the test opens the gate: the first job's answer is then known while the round trip still runs."""

    def __init__(self, gate: str):
        super().__init__({})
        self.gate = gate

    def batch_line(self, job):
        return str(job.id)

    def batch_submit_argv(self, lines, run_as):
        frame = 'printf "%s\\n\\n@@metasched-rc {i} 0\\n\\n@@metasched-end {i}\\n" "{nid}"'
        script = "; ".join([frame.format(i=0, nid=f"40{lines[0]}"),
                            f"while [ ! -e {shlex.quote(self.gate)} ]; do sleep 0.05; done",
                            frame.format(i=1, nid=f"40{lines[1]}")])
        return ["sh", "-c", script]

    def parse_submit(self, job, rc, stdout, stderr):
        if rc != 0:
            raise SubmitRefused(stderr.strip())
        return stdout.strip()


def two_jobs(tmp_path, backend, monkeypatch):
    """A database with two jobs of alice waiting, and an engine holding the lease, dispatching them through
    `backend` (the fence file goes to a HOME of the test's own)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    db = Database(str(tmp_path / "db.sqlite3"))
    db.migrate()
    Services(db, CFG, Authority(CFG.auth)).sync_config()
    repo = Repository(db)
    with db.write():
        jobs = [lifecycle.create(repo, name=f"j{i}", queue_id=1, owner="alice", status=JobStatus.TO_BE_QUEUED,
                                 path="/home/alice/j.sh", options=(), pwd="/home/alice", actor="alice",
                                 reason="submitted", now=utcnow()) for i in range(2)]
        q = repo.list_queues()[0]
        engine = Engine(db, CFG, transports={q.master_node_id: LocalTransport(60)}, backends={q.id: backend})
    assert engine.lease.acquire()
    engine.installation = repo_installation(db, repo)
    return db, repo, jobs, q, engine


def repo_installation(db, repo):
    with db.read():
        return repo.get_setting("installation").value


def test_each_job_is_recorded_when_its_answer_arrives_not_when_the_batch_ends(tmp_path, monkeypatch):
    gate = tmp_path / "gate"
    db, repo, jobs, q, engine = two_jobs(tmp_path, GatedBackend(str(gate)), monkeypatch)
    report = CycleReport(started_at=utcnow())
    runner = threading.Thread(target=engine.dispatcher().dispatch, args=(jobs, {q.id: q}, report))
    runner.start()
    try:
        seen = None
        for _ in range(400):
            with db.read():
                seen = [repo.get_job(j.id) for j in jobs]
            if seen[0].status is JobStatus.QUEUED:
                break
            time.sleep(0.05)
        assert seen[0].status is JobStatus.QUEUED and seen[0].scheduler_job_id == f"40{jobs[0].id}"
        assert seen[1].status is JobStatus.DISPATCHING       # its answer has not come yet
    finally:
        gate.touch()
        runner.join(30)
    with db.read():
        final = [repo.get_job(j.id) for j in jobs]
    assert [(j.status, j.scheduler_job_id) for j in final] == [
        (JobStatus.QUEUED, f"40{jobs[0].id}"), (JobStatus.QUEUED, f"40{jobs[1].id}")]
    assert report.summary["dispatched"] == 2
    db.close()


class ScriptedBackend(GatedBackend):
    """The whole batch is one fixed shell script."""

    def __init__(self, script: str):
        super().__init__("")
        self.script = script

    def batch_submit_argv(self, lines, run_as):
        return ["sh", "-c", self.script]


def dispatch_with(tmp_path, script: str, monkeypatch):
    db, repo, jobs, q, engine = two_jobs(tmp_path, ScriptedBackend(script), monkeypatch)
    report = CycleReport(started_at=utcnow())
    engine.dispatcher().dispatch(jobs, {q.id: q}, report)
    with db.read():
        out = [repo.get_job(j.id) for j in jobs]
    db.close()
    return out, report


def test_a_batch_refused_as_a_whole_gives_every_job_the_reason(tmp_path, monkeypatch):
    jobs, report = dispatch_with(tmp_path, 'echo "sudo: a password is required" >&2; exit 1', monkeypatch)
    assert [j.status for j in jobs] == [JobStatus.ERROR, JobStatus.ERROR]
    assert all(j.reason == "scheduler refused: sudo: a password is required" for j in jobs), jobs
    assert report.summary["refused"] == 2


def test_a_batch_that_stops_early_leaves_the_unanswered_job_to_the_next_cycle(tmp_path, monkeypatch):
    jobs, report = dispatch_with(tmp_path, 'printf "4001\\n\\n@@metasched-rc 0 0\\n\\n@@metasched-end 0\\n"; exit 1',
                                 monkeypatch)
    assert (jobs[0].status, jobs[0].scheduler_job_id) == (JobStatus.QUEUED, "4001")
    assert jobs[1].status is JobStatus.DISPATCHING and "outcome unknown" in jobs[1].reason
    assert report.summary["dispatched"] == 1


def test_a_holder_whose_cycle_makes_no_progress_stops_renewing_its_lease(tmp_path, monkeypatch):
    """A round trip that hangs (a remote command that closed its output but keeps running) must not keep the
    lease alive for ever through the heartbeat: after stall_limit seconds without progress it lapses."""
    db, repo, jobs, q, engine = two_jobs(tmp_path, ScriptedBackend("true"), monkeypatch)
    clock = {"now": engine.clock.mono()}
    engine.clock = type(engine.clock)(wall=engine.clock.wall, mono=lambda: clock["now"])
    engine.progress = clock["now"]
    assert engine.hold_lease()
    clock["now"] += engine.stall_limit - 1
    assert engine.hold_lease()                      # still within the limit: renewed
    clock["now"] += 2
    assert not engine.hold_lease() and not engine.holding
    db.close()
