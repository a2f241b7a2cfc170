"""Schema version 7 (workflows), and the versions after it: the upgrade of a version-3 database (through 4 and 5) and of a version-5 one, array tasks written through the one writer,
retention that never removes a job a waiting job depends on."""
from __future__ import annotations

import sqlite3

import pytest

from metasched import config as cfgmod
from metasched import lifecycle
from metasched.db.core import SCHEMA_VERSION, Database, migrations
from metasched.db.repository import Repository
from metasched.identity import Authority
from metasched.model import NO_SPEC, ArraySpec, Dependency, JobStatus
from metasched.services import Services
from tests.unit.old_versions import database_at_version

CONFIG = {"policy": {"name": "shared"}, "nodes": [{"ip": "10.0.0.1"}],
          "schedulers": [{"name": "SGE", "master": 0, "weight": 60}, {"name": "Slurm", "master": 0, "weight": 40}]}
NOW = "2026-12-01T10:00:00.000000Z"


def test_a_version_3_database_goes_through_4_5_and_6_to_7_and_on(tmp_path):
    """4 (the spark type), 5 (jobs.spec) and 6 (accounting) come before 7 (workflows) and 8 (events): the
    migrations apply in order."""
    versions = [v for v, _, _ in migrations()]
    assert versions == list(range(1, SCHEMA_VERSION + 1)) and SCHEMA_VERSION >= 7
    path = str(tmp_path / "v3.sqlite3")
    conn = database_at_version(path, 3)
    conn.execute("INSERT INTO nodes (address, port, position) VALUES ('n', 22, 0)")
    conn.execute("INSERT INTO queues (name, type, master_node_id, weight, position, created_at) "
                 "VALUES ('SGE', 'sge', 1, 50, 0, 'x')")
    conn.execute("INSERT INTO jobs (name, queue_id, owner, status, path, pwd, created_at, updated_at) "
                 "VALUES ('old', 1, 'alice', 'QUEUED', '/x', '/', 'x', 'x')")
    conn.execute("INSERT INTO job_events (job_id, at, old_status, new_status, actor, reason) "
                 "VALUES (1, 'x', 'DISPATCHING', 'QUEUED', 'poller', 'queued')")
    conn.close()
    db = Database(path)
    assert db.migrate() == SCHEMA_VERSION
    repo = Repository(db)
    with db.read():
        job = repo.get_job(1)
        assert (job.name, job.array_spec, job.depends_on, job.spec) == ("old", None, (), NO_SPEC)
        assert [e.task for e in repo.list_job_events(1)] == [None]
        assert repo.list_queues()[0].unreachable_since is None
    # the dispatch counters still count native submissions, and never an array's tasks
    with db.write():
        repo.insert_job_event(job_id=1, old_status=JobStatus.DISPATCHING, new_status=JobStatus.QUEUED,
                              actor="poller", reason="x", now=NOW)
        repo.insert_job_event(job_id=1, old_status=JobStatus.DISPATCHING, new_status=JobStatus.QUEUED,
                              actor="poller", reason="x", now=NOW, task=4)
    with db.read():
        assert repo.metrics_dispatch_counts() == {1: (2, 0)}
    db.close()


def test_migration_7_on_a_version_5_database_keeps_the_spec_column_and_the_spark_type(tmp_path):
    """0007 only adds (columns, a table, a trigger, a view): jobs.spec, with its values and its JSON check, and the
    queues 0004 rebuilt (any backend's type, spark's too) are as they were."""
    path = str(tmp_path / "v5.sqlite3")
    conn = database_at_version(path, 5)
    conn.execute("INSERT INTO nodes (address, port, position) VALUES ('n', 22, 0)")
    conn.execute("INSERT INTO queues (name, type, master_node_id, weight, position, created_at) "
                 "VALUES ('Spark', 'spark', 1, 50, 0, 'x')")
    conn.execute("INSERT INTO jobs (name, queue_id, owner, status, path, pwd, created_at, updated_at, spec) "
                 "VALUES ('app', 1, 'alice', 'TO_BE_QUEUED', '/x', '/', 'x', 'x', "
                 "'{\"resources\": {\"walltime\": 60}, \"stdout\": \"%j.out\"}')")
    tables = {r[0]: r[1] for r in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    db = Database(path)
    assert db.migrate() == SCHEMA_VERSION
    c = db.conn
    after = {r[0]: r[1] for r in c.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'")}
    assert after["queues"].replace(", unreachable_since TEXT", "") == tables["queues"]      # only a column more
    for column in ("spec", "token", "attempts"):                      # 5's and 3's columns, and their checks, kept
        assert column in after["jobs"]
    assert "json_valid(spec)" in after["jobs"]
    assert "array_spec" in after["jobs"] and "depends_on" in after["jobs"] and "unreachable_since" in after["queues"]
    repo = Repository(db)
    with db.read():
        job = repo.get_job(1)
        assert (job.spec.resources.walltime, job.spec.stdout, job.array_spec) == (60, "%j.out", None)
        assert repo.list_queues()[0].type == "spark"
    with pytest.raises(sqlite3.IntegrityError):                          # the spec's JSON check still holds
        c.execute("UPDATE jobs SET spec = 'not json' WHERE id = 1")
    c.execute("INSERT INTO queues (name, type, master_node_id, weight, created_at) VALUES ('S2', 'spark', 1, 1, 'x')")
    with pytest.raises(sqlite3.IntegrityError):                          # the queues' own checks still hold
        c.execute("INSERT INTO queues (name, type, master_node_id, weight, created_at) VALUES ('P', 'sge', 1, 101, 'x')")
    assert c.execute("PRAGMA foreign_key_check").fetchall() == []
    assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


@pytest.fixture
def svc(tmp_path):
    cfg = cfgmod.parse(CONFIG)
    db = Database(str(tmp_path / "db.sqlite3"))
    db.migrate()
    s = Services(db, cfg, Authority(cfg.auth, service_uid=999999), clock=lambda: NOW)
    s.sync_config()
    yield s
    db.close()


def test_an_array_is_one_job_row_and_a_task_row_each_written_by_the_one_writer(svc):
    repo = svc.repo
    with svc.db.write():
        job = lifecycle.create(repo, name="a", queue_id=1, owner="alice", status=JobStatus.TO_BE_QUEUED, path="/x",
                               options=[], pwd="/", actor="alice", reason="submitted", now=NOW,
                               array=ArraySpec.parse("1-9:2%2"))
        assert job.array_spec == "1-9:2%2"
        assert repo.count_array_tasks([job.id]) == {job.id: {"TO_BE_QUEUED": 5}}
        marked = lifecycle.transition(repo, job, JobStatus.DISPATCHING, actor="poller", reason="d", now=NOW)
        queued = lifecycle.transition(repo, marked, JobStatus.QUEUED, actor="poller", reason="queued in SGE as 3",
                                      now=NOW, scheduler_job_id="3")
        assert repo.count_array_tasks([job.id]) == {job.id: {"QUEUED": 5}}        # the tasks follow the array
        t = repo.get_array_task(job.id, 3)
        running = lifecycle.task_transition(repo, t, JobStatus.RUNNING, actor="poller", reason="r", now=NOW,
                                            native_id="3.3")
        assert lifecycle.task_transition(repo, t, JobStatus.RUNNING, actor="poller", reason="r", now=NOW) is None
        assert running.started_at == NOW and running.native_id == "3.3" and running.version == t.version + 1
        with pytest.raises(lifecycle.IllegalTaskTransition):
            lifecycle.task_transition(repo, running, JobStatus.QUEUED, actor="poller", reason="no", now=NOW)
        lifecycle.transition(repo, queued, JobStatus.CANCELLED, actor="poller", reason="cancelled by alice", now=NOW)
        assert repo.count_array_tasks([job.id]) == {job.id: {"CANCELLED": 5}}     # ended with the array
        assert [e.new_status for e in repo.list_job_events(job.id, 3)] == ["RUNNING"]
        assert [e.new_status for e in repo.list_job_events(job.id)] == ["TO_BE_QUEUED", "DISPATCHING", "QUEUED",
                                                                        "CANCELLED"]


def test_retention_keeps_a_job_a_waiting_job_depends_on_however_old(svc):
    repo = svc.repo
    with svc.db.write():
        old = lifecycle.create(repo, name="old", queue_id=1, owner="alice", status=JobStatus.TO_BE_QUEUED,
                               path="/x", options=[], pwd="/", actor="alice", reason="s", now=NOW)
        other = lifecycle.create(repo, name="other", queue_id=1, owner="alice", status=JobStatus.TO_BE_QUEUED,
                                 path="/x", options=[], pwd="/", actor="alice", reason="s", now=NOW)
        for j in (old, other):
            lifecycle.transition(repo, j, JobStatus.CANCELLED, actor="alice", reason="c", now=NOW)
        lifecycle.create(repo, name="waits", queue_id=1, owner="alice", status=JobStatus.HELD, path="/x", options=[],
                         pwd="/", actor="alice", reason="s", now=NOW, depends_on=(Dependency("any", old.id),))
        lifecycle.create(repo, name="newest", queue_id=1, owner="alice", status=JobStatus.TO_BE_QUEUED, path="/x",
                         options=[], pwd="/", actor="alice", reason="s", now=NOW)
        assert repo.prune_finished_jobs(before="2099-01-01T00:00:00.000000Z", limit=100) == 1
        assert repo.get_job(old.id) is not None and repo.get_job(other.id) is None
