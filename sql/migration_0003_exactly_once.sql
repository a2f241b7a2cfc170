-- Schema version 3: exactly-once under faults.
--
-- poller_lease: the row is never deleted any more (a released lease has an empty holder), so that its epoch
-- only ever grows. Every acquisition by a new holder increments the epoch; every write the poller makes
-- checks, in the same transaction, that it still holds that epoch (fencing). Expiry is measured on the
-- host's boot-time clock (expires_mono, CLOCK_BOOTTIME seconds, comparable between the processes of one
-- boot of one host), so a wall-clock step neither stretches nor cuts a lease; expires_at (UTC) is for
-- display and for a contender on another host. A holder on this host whose process is gone (pid and its
-- start time, boot_id) frees the lease at once.
ALTER TABLE poller_lease ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE poller_lease ADD COLUMN host TEXT NOT NULL DEFAULT '';
ALTER TABLE poller_lease ADD COLUMN boot_id TEXT NOT NULL DEFAULT '';
ALTER TABLE poller_lease ADD COLUMN pid INTEGER NOT NULL DEFAULT 0;
ALTER TABLE poller_lease ADD COLUMN pid_start INTEGER NOT NULL DEFAULT 0;
ALTER TABLE poller_lease ADD COLUMN expires_mono REAL NOT NULL DEFAULT 0;

-- jobs: token, random per job, travels in the native tag (ms<id>-<token>_<name>), so that only jobs this
-- database dispatched are ever adopted (not another metasched's on the same machine, not a wiped or restored
-- database's). NULL for jobs created by schema version 2: their tag is the old ms<id>_<name>.
-- attempts: dispatch attempts so far (each DISPATCHING mark counts one); bounded by poller.max_attempts.
ALTER TABLE jobs ADD COLUMN token TEXT;
ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

-- job_events: ids that only ever grow (AUTOINCREMENT: never reused, even after pruning), so that the table
-- is an outbox a reader can follow with a cursor. Rebuilt: SQLite cannot add AUTOINCREMENT in place.
DROP VIEW recent_events;
CREATE TABLE job_events_v3 (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at          TEXT NOT NULL,
    old_status  TEXT,
    new_status  TEXT NOT NULL,
    actor       TEXT NOT NULL,           -- the user who acted, or 'poller'
    reason      TEXT
) STRICT;
INSERT INTO job_events_v3 (id, job_id, at, old_status, new_status, actor, reason)
    SELECT id, job_id, at, old_status, new_status, actor, reason FROM job_events ORDER BY id;
DROP TABLE job_events;
ALTER TABLE job_events_v3 RENAME TO job_events;
CREATE INDEX job_events_by_job ON job_events (job_id, id);
CREATE VIEW recent_events AS
    SELECT e.at, e.job_id, j.owner, q.name AS queue, e.old_status, e.new_status, e.actor, e.reason
    FROM job_events e JOIN jobs j ON j.id = e.job_id JOIN queues q ON q.id = j.queue_id
    ORDER BY e.id DESC
    LIMIT 100;

-- Counters kept by triggers, so that GET /queues and GET /metrics read a few rows whatever the size of the
-- history (a GROUP BY over a million jobs and a scan of four million events took 2.3 s per scrape).
CREATE TABLE job_counts (
    queue_id INTEGER NOT NULL,
    status   TEXT NOT NULL,
    n        INTEGER NOT NULL,
    PRIMARY KEY (queue_id, status)
) STRICT, WITHOUT ROWID;
INSERT INTO job_counts (queue_id, status, n) SELECT queue_id, status, count(*) FROM jobs GROUP BY queue_id, status;

CREATE TRIGGER jobs_counted_on_insert AFTER INSERT ON jobs BEGIN
    INSERT INTO job_counts (queue_id, status, n) VALUES (new.queue_id, new.status, 1)
    ON CONFLICT (queue_id, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER jobs_counted_on_update AFTER UPDATE OF status, queue_id ON jobs
WHEN old.status IS NOT new.status OR old.queue_id IS NOT new.queue_id BEGIN
    UPDATE job_counts SET n = n - 1 WHERE queue_id = old.queue_id AND status = old.status;
    INSERT INTO job_counts (queue_id, status, n) VALUES (new.queue_id, new.status, 1)
    ON CONFLICT (queue_id, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER jobs_counted_on_delete AFTER DELETE ON jobs BEGIN
    UPDATE job_counts SET n = n - 1 WHERE queue_id = old.queue_id AND status = old.status;
END;

-- Per queue, monotonically: jobs handed to their scheduler (DISPATCHING -> QUEUED or RUNNING) and dispatches
-- that failed for good (refused by the scheduler, or given up after poller.max_attempts).
CREATE TABLE dispatch_counters (
    queue_id   INTEGER PRIMARY KEY,
    dispatched INTEGER NOT NULL DEFAULT 0,
    failed     INTEGER NOT NULL DEFAULT 0
) STRICT;
INSERT INTO dispatch_counters (queue_id, dispatched, failed)
    SELECT j.queue_id,
           sum(e.old_status = 'DISPATCHING' AND e.new_status IN ('QUEUED', 'RUNNING')),
           sum(e.new_status = 'ERROR' AND e.reason LIKE 'scheduler refused%')
    FROM job_events e JOIN jobs j ON j.id = e.job_id
    WHERE e.actor = 'poller' AND e.new_status IN ('QUEUED', 'RUNNING', 'ERROR')
    GROUP BY j.queue_id;
CREATE TRIGGER dispatches_counted AFTER INSERT ON job_events
WHEN new.actor = 'poller' AND new.old_status = 'DISPATCHING'
     AND (new.new_status IN ('QUEUED', 'RUNNING')
          OR (new.new_status = 'ERROR' AND (new.reason LIKE 'scheduler refused%' OR new.reason LIKE 'gave up%')))
BEGIN
    INSERT INTO dispatch_counters (queue_id, dispatched, failed)
        SELECT queue_id, new.new_status != 'ERROR', new.new_status = 'ERROR' FROM jobs WHERE id = new.job_id
    ON CONFLICT (queue_id) DO UPDATE SET dispatched = dispatched + excluded.dispatched,
                                         failed = failed + excluded.failed;
END;

-- The installation id: random, made once per database. It names this installation's fence file on the nodes
-- (see metasched/engine/fence.py), so that two installations on one machine never share one.
INSERT INTO settings (key, value, updated_at, updated_by)
VALUES ('installation', json_quote(lower(hex(randomblob(6)))), strftime('%Y-%m-%dT%H:%M:%S.000000Z', 'now'),
        'migration')
ON CONFLICT (key) DO NOTHING;
