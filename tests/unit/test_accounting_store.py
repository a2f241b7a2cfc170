"""Schema version 6 (issue 15): the migration (after 4, the spark type, and 5, the job spec), and the accounting
written with a job's final state by the one writer of job changes."""
from __future__ import annotations

import sqlite3

import pytest

from metasched import config as cfgmod
from metasched import lifecycle
from metasched.db.core import SCHEMA_VERSION, Database, migrations
from metasched.db.repository import Repository
from metasched.identity import Authority
from metasched.model import NO_SPEC, Accounting, JobStatus
from metasched.services import Services
from tests.unit.old_versions import database_at_version

CONFIG = {"policy": {"name": "shared"}, "nodes": [{"ip": "10.0.0.1"}],
          "schedulers": [{"name": "SGE", "master": 0, "weight": 100}]}


def test_migration_versions_are_contiguous():
    versions = [v for v, _, _ in migrations()]
    assert SCHEMA_VERSION == max(versions)
    assert list(range(1, SCHEMA_VERSION + 1)) == versions


def test_a_version_3_database_migrates_to_the_latest_and_keeps_its_jobs(tmp_path):
    path = str(tmp_path / "v3.sqlite3")
    conn = database_at_version(path, 3)
    conn.execute("INSERT INTO nodes (address, port, position) VALUES ('10.0.0.1', 22, 0)")
    conn.execute("INSERT INTO queues (name, type, master_node_id, weight, position, created_at) "
                 "VALUES ('SGE', 'sge', 1, 100, 0, 'now')")
    conn.execute("INSERT INTO jobs (name, queue_id, owner, status, path, pwd, created_at, updated_at, finished_at) "
                 "VALUES ('old', 1, 'alice', 'COMPLETED', '/x', '/', 'a', 'b', '2026-01-01T00:00:00.000000Z')")
    conn.close()
    db = Database(path)
    assert db.migrate() == SCHEMA_VERSION
    with db.read():
        (old,) = Repository(db).list_jobs(after=0, limit=10)
    assert old.name == "old" and old.accounting is None      # recorded before accounting existed: none
    assert old.spec is NO_SPEC                                  # 5's column, kept by 6
    with db.write():                                            # 4's queues (any backend's type), kept by 6
        db.conn.execute("INSERT INTO queues (name, type, master_node_id, weight, position, created_at) "
                        "VALUES ('Spark', 'spark', 1, 0, 1, 'now')")
        with pytest.raises(sqlite3.IntegrityError):             # and its other checks
            db.conn.execute("INSERT INTO queues (name, type, master_node_id, weight, position, created_at) "
                            "VALUES ('X', 'sge', 1, 101, 2, 'now')")
        with pytest.raises(sqlite3.IntegrityError):
            db.conn.execute("UPDATE jobs SET spec = 'not json' WHERE id = ?", (old.id,))
    db.close()


@pytest.fixture
def repo(tmp_path):
    db = Database(str(tmp_path / "db.sqlite3"))
    db.migrate()
    cfg = cfgmod.parse(CONFIG)
    Services(db, cfg, Authority(cfg.auth, service_uid=999999)).sync_config()
    yield Repository(db)
    db.close()


def running_job(repo):
    with repo.db.write():
        job = lifecycle.create(repo, name="j", queue_id=1, owner="alice", status=JobStatus.TO_BE_QUEUED, path="/x",
                               options=[], pwd="/", actor="alice", reason="submitted", now="t0")
        job = lifecycle.transition(repo, job, JobStatus.DISPATCHING, actor="poller", reason="r", now="t1")
        return lifecycle.transition(repo, job, JobStatus.RUNNING, actor="poller", reason="r", now="t2",
                                    scheduler_job_id="42")


def test_the_final_state_is_recorded_with_its_accounting_completed_by_the_agents(repo):
    job = running_job(repo)
    with repo.db.write():
        repo.upsert_job_usage(job_id=job.id, at="t3", nodes=["10.0.0.1"], cpu_seconds=2.5, cpu_percent=None,
                              rss_bytes=100, pids=2)
        repo.upsert_job_usage(job_id=job.id, at="t4", nodes=["10.0.0.2"], cpu_seconds=2.0, cpu_percent=50.0,
                              rss_bytes=50, pids=1)
    reported = Accounting.of("scontrol", start_time="2026-11-28T00:04:27Z", wall_seconds=8.0, nodes="vm",
                             extra={"tasks": 2})
    with repo.db.write():
        done = lifecycle.observed(repo, job, JobStatus.COMPLETED, actor="poller", reason="ended", now="t5",
                                  exit_code=0, accounting=reported)
    assert done.accounting.cpu_seconds == 2.5 and done.accounting.max_rss_bytes == 100   # the largest seen
    assert done.accounting.nodes == "vm"               # the scheduler's own word wins over the agents'
    with repo.db.read():
        stored = repo.get_job(job.id)
    assert stored.accounting == done.accounting
    assert stored.accounting.sources == {"start_time": "scontrol", "wall_seconds": "scontrol", "nodes": "scontrol",
                                         "cpu_seconds": "agent", "max_rss_bytes": "agent"}
    assert stored.accounting.extra == {"tasks": 2}


def test_a_job_that_never_ran_has_no_accounting(repo):
    job = running_job(repo)
    with repo.db.write():
        done = lifecycle.observed(repo, job, JobStatus.CANCELLED, actor="poller", reason="cancelled", now="t5")
    assert done.accounting is None
    with repo.db.read():
        assert repo.get_job(job.id).accounting is None
