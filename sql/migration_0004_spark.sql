-- Schema version 4: the `spark` scheduler type, and no list of scheduler types in the schema any more: a queue's
-- type is one of the backends' (metasched/backends/__init__.py, BACKENDS), checked by the config that creates
-- the queue, so that a new scheduler is its backend module and needs no migration. SQLite cannot change a CHECK
-- constraint in place, so the queues table is rebuilt with the same columns, without that CHECK, and the same
-- rows (ids kept).
-- This runs inside the migration's transaction, with foreign keys on (PRAGMA foreign_keys cannot change
-- inside a transaction): the foreign keys of jobs and foreign_jobs are deferred to the COMMIT, by which
-- time every queue row is back; legacy_alter_table keeps the RENAME from re-checking the views that
-- name `queues` while it is briefly absent (they work again once it is back, unchanged).
-- Written against the queues table of migration 0001 (0002 and 0003 do not change it; 0003 adds triggers on
-- jobs and job_events and a view joining queues, which the rebuild leaves as they are).

PRAGMA defer_foreign_keys = ON;
PRAGMA legacy_alter_table = ON;

CREATE TABLE queues_v4 (
    id              INTEGER PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE COLLATE NOCASE,  -- the scheduler's name: what keeps the id stable
    type            TEXT NOT NULL,        -- one of backends.BACKENDS (the config checks it)
    master_node_id  INTEGER NOT NULL REFERENCES nodes (id),
    weight          INTEGER NOT NULL CHECK (weight BETWEEN 0 AND 100),
    position        INTEGER,             -- index in the config's schedulers list; NULL once removed
    reachable       INTEGER CHECK (reachable IN (0, 1)),
    last_error      TEXT,
    checked_at      TEXT,
    usage           REAL NOT NULL DEFAULT 0,   -- decayed CPU usage, for the dynamic policy
    created_at      TEXT NOT NULL
) STRICT;

CREATE TEMP TABLE queues_before_v4 AS SELECT * FROM queues;
DROP TABLE queues;
ALTER TABLE queues_v4 RENAME TO queues;
INSERT INTO queues (id, name, type, master_node_id, weight, position, reachable, last_error, checked_at, usage,
                    created_at)
    SELECT id, name, type, master_node_id, weight, position, reachable, last_error, checked_at, usage, created_at
    FROM temp.queues_before_v4;
DROP TABLE temp.queues_before_v4;

PRAGMA legacy_alter_table = OFF;
