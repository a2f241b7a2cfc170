"""The SQLite store: named queries, migrations, pragmas, STRICT tables, views, stable ids, lease, transactions."""
from __future__ import annotations

import multiprocessing
import os
import re
import sqlite3
import subprocess
import threading

import pytest

from metasched import config as cfgmod
from metasched.db.core import QUERIES, SCHEMA_VERSION, Database, migrations, parse_queries
from metasched.db.repository import Repository
from metasched.engine.lease import Identity, Lease, LeaseLost, boot_id, may_take
from metasched.model import LeaseRecord
from metasched.errors import Unavailable
from metasched.identity import Authority
from metasched.model import JobStatus
from metasched.services import Services

CONFIG = {
    "policy": {"name": "shared"},
    "nodes": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}],
    "schedulers": [{"name": "SGE", "master": 0, "weight": 60}, {"name": "Slurm", "master": 1, "weight": 40}],
}


@pytest.fixture
def db(tmp_path):
    d = Database(str(tmp_path / "db.sqlite3"))
    d.migrate()
    yield d
    d.close()


def services(db, raw=CONFIG) -> Services:
    cfg = cfgmod.parse(raw)
    svc = Services(db, cfg, Authority(cfg.auth, service_uid=999999))
    svc.sync_config()
    return svc


# -- named queries --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def schema_db(tmp_path_factory):
    d = Database(str(tmp_path_factory.mktemp("schema") / "db.sqlite3"))
    d.migrate()
    yield d
    d.close()


@pytest.mark.parametrize("name", QUERIES.names())
def test_every_named_query_compiles(schema_db, name):
    sql = getattr(QUERIES, name)
    params = {p: None for p in re.findall(r"(?<!:):([a-z_][a-z0-9_]*)", sql)}
    assert params or "SELECT" in sql or "DELETE" in sql
    schema_db.conn.execute("EXPLAIN " + sql, params).fetchall()


def test_query_loader():
    assert parse_queries("-- name: a\nSELECT 1;\n-- name: b\n-- a comment\nSELECT 2;") == {
        "a": "SELECT 1;", "b": "-- a comment\nSELECT 2;"}
    with pytest.raises(ValueError, match="defined twice"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;")
    with pytest.raises(AttributeError, match="no query named"):
        QUERIES.nope
    assert len(QUERIES.names()) > 40


def test_every_query_is_run_by_the_repository():
    """A query no code runs is dead SQL; the repository runs each as self.q.<name> (usually in the method
    of the same name)."""
    import inspect

    from metasched.db import repository
    source = inspect.getsource(repository)
    unused = [n for n in QUERIES.names() if f"self.q.{n}" not in source]
    assert unused == []


# -- schema ---------------------------------------------------------------------------------------

def test_migration_sets_user_version_and_is_idempotent(tmp_path):
    d = Database(str(tmp_path / "m.sqlite3"))
    assert d.conn.execute("PRAGMA user_version").fetchone()[0] == 0
    assert d.migrate() == SCHEMA_VERSION == max(v for v, _, _ in migrations())
    tables = d.conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
    assert d.migrate() == SCHEMA_VERSION
    assert d.conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0] == tables
    d.close()


def _migrate_in_process(path: str, barrier, out) -> None:
    barrier.wait()
    try:
        out.put(Database(path).migrate())
    except Exception as exc:   # reported to the parent, which fails the test
        out.put(repr(exc))


def test_concurrent_migrations_are_safe(tmp_path):
    path = str(tmp_path / "race.sqlite3")
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_migrate_in_process, args=(path, barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(10)
    assert results == [SCHEMA_VERSION] * 4
    d = Database(path)
    assert d.conn.execute("SELECT count(*) FROM sqlite_schema WHERE name = 'jobs'").fetchone()[0] == 1
    d.close()


def test_pragmas_in_force(db):
    c = db.conn
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert c.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
    assert Database(db.path, busy_timeout_ms=250).conn.execute("PRAGMA busy_timeout").fetchone()[0] == 250
    # and the foreign keys really are enforced
    with pytest.raises(sqlite3.IntegrityError):
        with db.write():
            c.execute("INSERT INTO jobs (name, queue_id, owner, status, path, pwd, created_at, updated_at) "
                      "VALUES ('x', 999, 'alice', 'HELD', '/x', '/', 'now', 'now')")


def test_tables_are_strict(db):
    rows = db.conn.execute("SELECT name, strict FROM pragma_table_list WHERE schema = 'main' "
                           "AND type = 'table' AND name NOT LIKE 'sqlite_%'").fetchall()
    assert len(rows) >= 8
    assert [r["name"] for r in rows if not r["strict"]] == []
    with pytest.raises(sqlite3.IntegrityError, match="cannot store TEXT"):
        with db.write():
            db.conn.execute("INSERT INTO nodes (address, port, position) VALUES ('a', 'twenty-two', 0)")


def test_views_answer_the_admins_questions(db):
    svc = services(db)
    alice = svc.authority.caller("alice", "socket")
    for q in ("SGE", "SGE", "Slurm"):
        svc.submit_job(alice, {"queue": q, "path": "/home/alice/x.sh"})
    svc.hold_job(alice, 1)
    # what an admin types in the sqlite3 shell, from a separate plain connection
    shell = sqlite3.connect(db.path)
    assert shell.execute("SELECT queue, status, jobs FROM jobs_per_queue_state").fetchall() == [
        ("SGE", "HELD", 1), ("SGE", "TO_BE_QUEUED", 1), ("Slurm", "TO_BE_QUEUED", 1)]
    recent = shell.execute("SELECT job_id, owner, queue, old_status, new_status, actor FROM recent_events").fetchall()
    assert recent[0] == (1, "alice", "SGE", "TO_BE_QUEUED", "HELD", "alice")
    assert len(recent) == 4
    assert [r[0] for r in shell.execute("SELECT id FROM active_jobs")] == [1, 2, 3]
    shell.close()


# -- stable ids -----------------------------------------------------------------------------------

def _ids(db):
    return ({r["name"]: r["id"] for r in db.conn.execute("SELECT * FROM queues")},
            {(r["address"], r["port"]): r["id"] for r in db.conn.execute("SELECT * FROM nodes")})


def test_ids_stable_across_restarts_and_reordering(db):
    services(db)
    queues, nodes = _ids(db)
    services(db)
    assert _ids(db) == (queues, nodes)
    swapped = dict(CONFIG, nodes=CONFIG["nodes"][::-1],
                   schedulers=[dict(CONFIG["schedulers"][1], master=0), dict(CONFIG["schedulers"][0], master=1)])
    svc = services(db, swapped)
    assert _ids(db) == (queues, nodes)
    listed = [s.queue for s in svc.list_queues(svc.authority.caller("root", "socket"))]
    assert [q.name for q in listed] == ["Slurm", "SGE"]
    # each master is still the same machine although its index changed
    assert {q.name: q.master_node_id for q in listed} == {"SGE": nodes[("10.0.0.1", 22)],
                                                         "Slurm": nodes[("10.0.0.2", 22)]}
    assert svc.get_master_node(svc.authority.caller("root", "socket")).address == "10.0.0.2"


# -- lease ----------------------------------------------------------------------------------------

class FakeClock:
    def __init__(self, mono=1000.0, wall=1_800_000_000.0):
        self.m, self.w = mono, wall

    def mono(self):
        return self.m

    def wall(self):
        return self.w


def identity(name, pid=4242, start=77, host="front", boot="boot-1"):
    return Identity(name=name, host=host, boot_id=boot, pid=pid, pid_start=start)


def test_lease_acquire_refuse_renew_take_over_with_a_new_epoch(db):
    services(db)
    clock = FakeClock()
    alive = {4242: 77, 4343: 88}
    a = Lease(db, identity("a", 4242, 77), 15, mono=clock.mono, wall=clock.wall, alive=alive.get)
    b = Lease(db, identity("b", 4343, 88), 15, mono=clock.mono, wall=clock.wall, alive=alive.get)
    if True:
        assert a.acquire() and a.epoch == 1
        clock.m += 5
        assert not b.acquire()                       # refused while a lives and its lease runs
        clock.m += 5
        assert a.acquire() and a.epoch == 1          # renewed: same epoch
        clock.m += 14
        assert not b.acquire()                       # a renewed 14 s ago: still valid
        clock.m += 2
        assert b.acquire() and b.epoch == 2          # expired: taken over with a new epoch
        with pytest.raises(LeaseLost):
            with a.fenced():                          # a stale holder can write nothing
                pass
        assert not a.acquire()
        b.release()
        with db.read():
            assert Repository(db).get_lease().epoch == 2     # a released lease keeps its epoch
        assert a.acquire() and a.epoch == 3


def test_a_wall_clock_step_neither_keeps_a_dead_lease_nor_cuts_a_live_one(db):
    services(db)
    clock = FakeClock()
    me = dict(pid=os.getpid(), start=L_start(), boot=boot_id())
    a = Lease(db, identity("a", **me), 15, mono=clock.mono, wall=clock.wall)
    b = Lease(db, identity("b", **me), 15, mono=clock.mono, wall=clock.wall)
    assert a.acquire()
    clock.w -= 3600                                   # the wall clock set back an hour
    clock.m += 5
    assert not b.acquire()                            # a's lease is still valid: 5 s of its 15 passed
    clock.w += 7200                                   # and an hour ahead
    assert not b.acquire()
    clock.m += 11
    assert b.acquire() and b.epoch == 2               # 16 s on the boot-time clock: expired


def test_a_holder_whose_process_is_gone_frees_the_lease_at_once(db):
    services(db)
    clock = FakeClock()
    dead = subprocess.Popen(["true"])
    dead.wait()
    a = Lease(db, identity("a", dead.pid, 1, boot=boot_id()), 3600, mono=clock.mono, wall=clock.wall)
    b = Lease(db, identity("b", os.getpid(), L_start(), boot=boot_id()), 3600, mono=clock.mono, wall=clock.wall)
    assert a.acquire()
    assert b.acquire() and b.epoch == 2               # no waiting for the hour-long lease
    assert may_take(LeaseRecord("x", 1, "", "", "", host="front", boot_id="boot-0", pid=1, pid_start=1,
                                expires_mono=1e12), identity("y"), mono=0, wall=0) == (
        True, "its holder's host has rebooted since")
    assert may_take(LeaseRecord("x", 1, "", "", "2027-01-15T08:00:00.000000Z", host="other", boot_id="?", pid=1,
                                pid_start=1), identity("y"), mono=1e12, wall=0)[0] is False      # another host: only its wall-clock expiry counts


def L_start():
    from metasched.engine.lease import process_start
    return process_start(os.getpid())


# -- transactions ---------------------------------------------------------------------------------

def test_write_rolls_back_on_exception(db):
    svc = services(db)
    with pytest.raises(RuntimeError):
        with db.write():
            svc.repo.insert_job(name="x", queue_id=1, owner="alice", status=JobStatus.HELD, path="/x",
                                options=[], pwd="/", token=None, now="2026-01-01T00:00:00.000000Z")
            raise RuntimeError("boom")
    assert db.conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
    assert not db.conn.in_transaction
    with db.write():   # the connection is usable afterwards
        svc.repo.insert_job(name="x", queue_id=1, owner="alice", status=JobStatus.HELD, path="/x",
                            options=[], pwd="/", token=None, now="2026-01-01T00:00:00.000000Z")
    assert db.conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1


def test_write_waits_for_the_lock_then_reports_unavailable(db):
    quick = Database(db.path, busy_timeout_ms=50)
    other = sqlite3.connect(db.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(Unavailable, match="database busy"):
            with quick.write():
                pass
        assert not quick.conn.in_transaction
    finally:
        other.execute("ROLLBACK")
        other.close()
    with quick.write():
        quick.conn.execute("UPDATE settings SET updated_by = updated_by")
    quick.close()


def test_connections_are_per_thread(db):
    seen = []
    t = threading.Thread(target=lambda: seen.append(db.conn))
    t.start()
    t.join()
    assert seen[0] is not db.conn


@pytest.mark.parametrize("name, params", [
    ("latest_job_change", {}),
    ("list_jobs_in_states", {"statuses": '["TO_BE_QUEUED", "DISPATCHING", "QUEUED", "RUNNING"]'}),
])
def test_the_pollers_frequent_queries_never_read_the_finished_history(db, name, params):
    """The poller runs these every cycle and every wake-up check; the jobs table keeps every finished job
    forever, so they must go through an index on status, not scan the table."""
    plan = [r[3] for r in db.conn.execute("EXPLAIN QUERY PLAN " + getattr(QUERIES, name), params).fetchall()]
    assert any("USING INDEX jobs_by_status" in step for step in plan), plan
    assert not any(re.match(r"SCAN jobs\b", step) for step in plan), plan


def test_the_pollers_commits_are_synced_before_it_acts(tmp_path):
    """synchronous=FULL for the poller (a DISPATCHING mark must survive a power loss before its submit goes
    out), NORMAL for the API (see docs/exactly-once.md)."""
    from metasched import config as cfgmod
    from metasched.poller import PollerThread
    cfg = cfgmod.parse(dict(CONFIG, server={"database": str(tmp_path / "p.sqlite3")}))
    poller = PollerThread(cfg)
    assert poller.db.conn.execute("PRAGMA synchronous").fetchone()[0] == 2          # FULL
    assert Database(str(tmp_path / "p.sqlite3")).conn.execute("PRAGMA synchronous").fetchone()[0] == 1
