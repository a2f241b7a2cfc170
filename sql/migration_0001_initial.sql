-- Schema version 1. Applied by metasched.db.core.Database.migrate when PRAGMA user_version < 1.
-- Times are UTC, ISO 8601 with microseconds and a Z ('2026-11-28T00:11:14.123456Z'): fixed width, so
-- they sort and compare as text.

CREATE TABLE nodes (
    id          INTEGER PRIMARY KEY,
    address     TEXT NOT NULL,
    port        INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    transport   TEXT NOT NULL DEFAULT 'ssh' CHECK (transport IN ('ssh', 'local')),
    position    INTEGER,                 -- index in the config's nodes list; NULL once removed from it
    reachable   INTEGER CHECK (reachable IN (0, 1)),   -- NULL: not checked yet
    last_seen   TEXT,                    -- last time it answered
    last_error  TEXT,
    checked_at  TEXT,
    load1       REAL,
    load5       REAL,
    load15      REAL,
    ncpus       INTEGER,
    enforcement TEXT,                    -- JSON: mechanism, per-scheduler target/measured shares
    UNIQUE (address, port)
) STRICT;

CREATE TABLE queues (
    id              INTEGER PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE COLLATE NOCASE,  -- the scheduler's name: what keeps the id stable
    type            TEXT NOT NULL CHECK (type IN ('sge', 'slurm', 'yarn', 'local')),
    master_node_id  INTEGER NOT NULL REFERENCES nodes (id),
    weight          INTEGER NOT NULL CHECK (weight BETWEEN 0 AND 100),
    position        INTEGER,             -- index in the config's schedulers list; NULL once removed
    reachable       INTEGER CHECK (reachable IN (0, 1)),
    last_error      TEXT,
    checked_at      TEXT,
    usage           REAL NOT NULL DEFAULT 0,   -- decayed CPU usage, for the dynamic policy
    created_at      TEXT NOT NULL
) STRICT;

CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY,
    name             TEXT NOT NULL,
    queue_id         INTEGER NOT NULL REFERENCES queues (id),
    owner            TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('TO_BE_QUEUED', 'HELD', 'DISPATCHING', 'QUEUED',
                                                     'RUNNING', 'COMPLETED', 'ERROR', 'CANCELLED')),
    path             TEXT NOT NULL,
    options          TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(options)),   -- JSON array of arguments
    pwd              TEXT NOT NULL,
    scheduler_job_id TEXT,
    exit_code        INTEGER,
    reason           TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0 CHECK (cancel_requested IN (0, 1)),
    final_checks     INTEGER NOT NULL DEFAULT 0,   -- how often accounting was asked how it ended
    created_at       TEXT NOT NULL,
    submitted_at     TEXT,
    started_at       TEXT,
    finished_at      TEXT,
    updated_at       TEXT NOT NULL,
    version          INTEGER NOT NULL DEFAULT 1
) STRICT;
CREATE INDEX jobs_by_owner ON jobs (owner, id);
CREATE INDEX jobs_by_status ON jobs (status, id);
CREATE INDEX jobs_by_queue_status ON jobs (queue_id, status);

CREATE TABLE job_events (
    id          INTEGER PRIMARY KEY,
    job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at          TEXT NOT NULL,
    old_status  TEXT,
    new_status  TEXT NOT NULL,
    actor       TEXT NOT NULL,           -- the user who acted, or 'poller'
    reason      TEXT
) STRICT;
CREATE INDEX job_events_by_job ON job_events (job_id, id);

CREATE TABLE cluster_events (
    id      INTEGER PRIMARY KEY,
    at      TEXT NOT NULL,
    actor   TEXT NOT NULL,
    kind    TEXT NOT NULL,               -- e.g. 'policy'
    detail  TEXT NOT NULL CHECK (json_valid(detail))
) STRICT;

CREATE TABLE settings (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL CHECK (json_valid(value)),
    updated_at  TEXT NOT NULL,
    updated_by  TEXT NOT NULL
) STRICT;

CREATE TABLE tokens (
    id           INTEGER PRIMARY KEY,
    user         TEXT NOT NULL,
    secret_hash  TEXT NOT NULL UNIQUE,   -- sha256 of the secret; the secret itself is never stored
    description  TEXT NOT NULL DEFAULT '',
    created_by   TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    revoked_at   TEXT,
    last_used_at TEXT
) STRICT;
CREATE INDEX tokens_by_user ON tokens (user, id);

CREATE TABLE poller_lease (
    name        TEXT PRIMARY KEY,        -- one row: 'poller'
    holder      TEXT NOT NULL,           -- host:pid:thread of the worker holding it
    acquired_at TEXT NOT NULL,
    renewed_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL
) STRICT;

CREATE TABLE poll_cycles (
    id          INTEGER PRIMARY KEY,
    holder      TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    duration_ms REAL NOT NULL,
    summary     TEXT NOT NULL CHECK (json_valid(summary)),   -- counts of what the cycle did
    errors      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(errors))  -- per node / scheduler errors
) STRICT;

-- Views for the sqlite3 shell.
CREATE VIEW jobs_per_queue_state AS
    SELECT q.name AS queue, j.status, count(*) AS jobs
    FROM jobs j JOIN queues q ON q.id = j.queue_id
    GROUP BY q.name, j.status
    ORDER BY q.name, j.status;

CREATE VIEW recent_events AS
    SELECT e.at, e.job_id, j.owner, q.name AS queue, e.old_status, e.new_status, e.actor, e.reason
    FROM job_events e JOIN jobs j ON j.id = e.job_id JOIN queues q ON q.id = j.queue_id
    ORDER BY e.id DESC
    LIMIT 100;

CREATE VIEW active_jobs AS
    SELECT j.id, j.owner, q.name AS queue, j.status, j.scheduler_job_id, j.name, j.created_at, j.started_at
    FROM jobs j JOIN queues q ON q.id = j.queue_id
    WHERE j.status NOT IN ('COMPLETED', 'ERROR', 'CANCELLED')
    ORDER BY j.id;
