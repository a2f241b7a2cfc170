"""Migration 0004: the queues table accepts the `spark` type (and any backend's: no list of types in the schema); a database of version 3 that already holds
queues, jobs, events and foreign jobs keeps every row, every id, every foreign key and its counters."""
from __future__ import annotations

import sqlite3

import pytest

from metasched.db.core import SCHEMA_VERSION, Database
from tests.unit import old_versions


def migrate_to(db: Database, upto: int) -> None:
    old_versions.migrate_to(db.conn, upto)

def test_a_populated_database_gains_the_spark_type_and_keeps_its_rows(tmp_path):
    db = Database(str(tmp_path / "v3.sqlite3"))
    migrate_to(db, 3)
    c = db.conn
    with pytest.raises(sqlite3.IntegrityError):   # what version 3 refuses
        c.execute("INSERT INTO queues (id, name, type, master_node_id, weight, created_at) "
                  "VALUES (9, 'Spark', 'spark', 1, 1, 't')")
    c.execute("INSERT INTO nodes (id, address, port) VALUES (1, '10.0.0.1', 22)")
    c.execute("INSERT INTO queues (id, name, type, master_node_id, weight, usage, created_at) "
              "VALUES (3, 'SGE', 'sge', 1, 60, 1.5, 't0'), (5, 'Slurm', 'slurm', 1, 40, 0, 't1')")
    c.execute("INSERT INTO jobs (id, name, queue_id, owner, status, path, pwd, created_at, updated_at, token) "
              "VALUES (1, 'a', 3, 'alice', 'RUNNING', '/x', '/y', 't', 't', 'abcdef'), "
              "(2, 'b', 5, 'bob', 'COMPLETED', '/x', '/y', 't', 't', NULL)")
    c.execute("INSERT INTO job_events (job_id, at, old_status, new_status, actor) "
              "VALUES (1, 't', 'DISPATCHING', 'RUNNING', 'poller')")
    c.execute("INSERT INTO foreign_jobs (queue_id, native_id, owner, name, state, first_seen, last_seen) "
              "VALUES (5, '77', 'bob', 'x', 'RUNNING', 't', 't')")
    before = c.execute("SELECT * FROM queues ORDER BY id").fetchall()
    counts = c.execute("SELECT * FROM job_counts ORDER BY queue_id, status").fetchall()
    dispatched = c.execute("SELECT * FROM dispatch_counters ORDER BY queue_id").fetchall()
    assert counts and dispatched

    assert db.migrate() == SCHEMA_VERSION
    # every row as it was; migration 0007 (workflows) adds unreachable_since at the end, NULL
    columns = ", ".join(before[0].keys())
    assert [tuple(r) for r in c.execute(f"SELECT {columns} FROM queues ORDER BY id")] == [tuple(r) for r in before]
    assert [r[0] for r in c.execute("SELECT unreachable_since FROM queues")] == [None, None]
    assert [tuple(r) for r in c.execute("SELECT * FROM jobs_per_queue_state")] == [("SGE", "RUNNING", 1),
                                                                                 ("Slurm", "COMPLETED", 1)]
    assert [tuple(r) for r in c.execute("SELECT queue, state, jobs FROM foreign_jobs_per_queue_state")] == [
        ("Slurm", "RUNNING", 1)]
    assert c.execute("SELECT * FROM job_counts ORDER BY queue_id, status").fetchall() == counts
    assert c.execute("SELECT * FROM dispatch_counters ORDER BY queue_id").fetchall() == dispatched
    assert [r[0] for r in c.execute("SELECT queue FROM recent_events")] == ["SGE"]
    assert c.execute("PRAGMA foreign_key_check").fetchall() == []
    assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    c.execute("INSERT INTO queues (id, name, type, master_node_id, weight, created_at) "
              "VALUES (9, 'Spark', 'spark', 1, 1, 't')")
    c.execute("UPDATE jobs SET status = 'COMPLETED' WHERE id = 1")     # the counters' triggers still fire
    assert c.execute("SELECT n FROM job_counts WHERE queue_id = 3 AND status = 'COMPLETED'").fetchone()[0] == 1
    with pytest.raises(sqlite3.IntegrityError):   # the foreign keys still hold
        c.execute("INSERT INTO jobs (id, name, queue_id, owner, status, path, pwd, created_at, updated_at) "
                  "VALUES (3, 'c', 42, 'alice', 'RUNNING', '/x', '/y', 't', 't')")
    with pytest.raises(sqlite3.IntegrityError):   # and the other checks
        c.execute("INSERT INTO queues (id, name, type, master_node_id, weight, created_at) "
                  "VALUES (10, 'Y', 'sge', 1, 101, 't')")
    # the types are the backends' (the config checks them): a scheduler added later needs no migration
    c.execute("INSERT INTO queues (id, name, type, master_node_id, weight, created_at) "
              "VALUES (11, 'PBS', 'pbs', 1, 1, 't')")
    assert c.execute("PRAGMA legacy_alter_table").fetchone()[0] == 0
    db.close()
