"""A lone surrogate in a stored job (earlier releases stored them in options; the API now refuses them)
cannot reach a command line: every backend refuses the job with a reason, so the dispatch records it as
ERROR instead of dying with UnicodeEncodeError twice a second and stalling the owner's later jobs."""
from __future__ import annotations

import pytest

from metasched import config as cfgmod, lifecycle
from metasched.backends import BACKENDS
from metasched.backends.sge import GridEngineBackend
from metasched.db.core import Database, utcnow
from metasched.db.repository import Repository
from metasched.engine import CycleReport, Engine
from metasched.identity import Authority
from metasched.model import Job, JobStatus
from metasched.services import Services
from metasched.transport import LocalTransport


def _job(**kw) -> Job:
    return Job(**{"id": 7, "name": "j", "queue_id": 1, "owner": "alice", "status": JobStatus.DISPATCHING,
                  "path": "/home/alice/j.sh", "options": ("ok",), "pwd": "/home/alice", **kw})


@pytest.mark.parametrize("kind", sorted(BACKENDS))
@pytest.mark.parametrize("bad", [{"options": ("\ud800",)}, {"options": ("a", "b\udfffc")},
                                 {"path": "/home/alice/\ud800.sh"}, {"pwd": "/home/\ud800"}])
def test_every_backend_refuses_a_job_no_command_line_can_carry(kind, bad):
    backend = BACKENDS[kind]({})
    with pytest.raises(ValueError, match="surrogate"):
        backend.batch_line(_job(**bad))
    with pytest.raises(ValueError, match="surrogate"):
        backend.submit_argv(_job(**bad), "alice")


class EchoBackend(GridEngineBackend):
    """Grid Engine's checks, but "submitting" prints a native id (no qsub needed); the job's arguments are
    on the command line, as they are on qsub's."""

    def submit_argv(self, job, run_as):
        super().submit_argv(job, run_as)             # the real checks
        return ["sh", "-c", 'echo "40$1"', "sh", str(job.id), *job.options]


def test_a_stored_surrogate_fails_its_job_and_the_owners_next_job_is_dispatched(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))                  # the node fence's file goes there
    cfg = cfgmod.parse({"policy": {"name": "shared"}, "nodes": [{"ip": "127.0.0.1", "transport": "local"}],
                        "schedulers": [{"name": "SGE", "master": 0, "weight": 100}]})
    db = Database(str(tmp_path / "db.sqlite3"))
    db.migrate()
    Services(db, cfg, Authority(cfg.auth)).sync_config()
    repo = Repository(db)
    with db.write():
        bad, good = (lifecycle.create(repo, name=name, queue_id=1, owner="alice", status=JobStatus.TO_BE_QUEUED,
                                      path="/home/alice/j.sh", options=options, pwd="/home/alice", actor="alice",
                                      reason="submitted", now=utcnow())
                     for name, options in (("bad", ["\ud800"]), ("good", ["x"])))
        q = repo.list_queues()[0]
    engine = Engine(db, cfg, transports={q.master_node_id: LocalTransport(60)}, backends={q.id: EchoBackend({})})
    assert engine.lease.acquire()
    with db.read():
        engine.installation = repo.get_setting("installation").value
    engine.dispatcher().dispatch([bad], {q.id: q}, CycleReport(started_at=utcnow()))
    engine.dispatcher().dispatch([good], {q.id: q}, CycleReport(started_at=utcnow()))
    with db.read():
        bad, good = repo.get_job(bad.id), repo.get_job(good.id)
    db.close()
    assert bad.status is JobStatus.ERROR and "surrogate" in bad.reason
    assert (good.status, good.scheduler_job_id) == (JobStatus.QUEUED, f"40{good.id}")
