-- Schema version 8: events out (webhooks, email, the event stream).
-- (Versions 6 and 7 come from other branches; Database.migrate applies every migration above the file's
-- user_version in order, so a gap in the numbers is harmless.)
--
-- events: ONE id space for everything a client can follow: every job event and every cluster event gets a row
-- here, in the same transaction that wrote it (triggers), so the ids grow in commit order (SQLite has one
-- writer at a time) and a reader that has seen id N has seen every event below N. GET /events?after=,
-- GET /events/stream (Last-Event-ID) and the webhook deliverer follow it with a cursor. owner is the job's
-- owner (who may see it; NULL for cluster events, which everyone may see).
CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    kind    TEXT NOT NULL CHECK (kind IN ('job', 'cluster')),
    ref_id  INTEGER NOT NULL,            -- job_events.id or cluster_events.id
    job_id  INTEGER,
    owner   TEXT,
    UNIQUE (kind, ref_id)
) STRICT;
CREATE INDEX events_by_job ON events (job_id) WHERE job_id IS NOT NULL;

INSERT INTO events (kind, ref_id, job_id, owner)
    SELECT kind, ref_id, job_id, owner FROM (
        SELECT 'job' AS kind, e.id AS ref_id, e.job_id, j.owner, e.at FROM job_events e JOIN jobs j ON j.id = e.job_id
        UNION ALL
        SELECT 'cluster', c.id, NULL, NULL, c.at FROM cluster_events c)
    ORDER BY at, kind, ref_id;

CREATE TRIGGER job_event_published AFTER INSERT ON job_events BEGIN
    INSERT INTO events (kind, ref_id, job_id, owner) SELECT 'job', new.id, new.job_id, owner FROM jobs WHERE id = new.job_id;
END;
CREATE TRIGGER cluster_event_published AFTER INSERT ON cluster_events BEGIN
    INSERT INTO events (kind, ref_id) VALUES ('cluster', new.id);
END;
-- retention removes jobs (their events by ON DELETE CASCADE) and old cluster events: their rows here go too
CREATE TRIGGER job_event_unpublished AFTER DELETE ON job_events BEGIN
    DELETE FROM events WHERE kind = 'job' AND ref_id = old.id;
END;
CREATE TRIGGER cluster_event_unpublished AFTER DELETE ON cluster_events BEGIN
    DELETE FROM events WHERE kind = 'cluster' AND ref_id = old.id;
END;

-- A node going down, and coming back, is a cluster event (not its first check when it answers).
CREATE TRIGGER node_reachability_changed AFTER UPDATE OF reachable ON nodes
WHEN new.reachable IS NOT NULL AND old.reachable IS NOT new.reachable
     AND NOT (old.reachable IS NULL AND new.reachable = 1)
BEGIN
    INSERT INTO cluster_events (at, actor, kind, detail)
    VALUES (coalesce(new.checked_at, strftime('%Y-%m-%dT%H:%M:%S.000000Z', 'now')), 'poller',
            CASE new.reachable WHEN 1 THEN 'node_up' ELSE 'node_down' END,
            json_object('node', new.id, 'address', new.address, 'port', new.port,
                        'error', CASE new.reachable WHEN 1 THEN NULL ELSE new.last_error END));
END;

-- job_notify: what a job's owner asked to be told (notify: {on, email, webhook, secret}); one row per job.
CREATE TABLE job_notify (
    job_id  INTEGER PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    on_what TEXT NOT NULL CHECK (json_valid(on_what)),   -- JSON array of start | end | fail
    email   TEXT,
    webhook TEXT,
    secret  TEXT                                           -- the webhook's HMAC-SHA256 key
) STRICT;

-- deliveries: one row per (event, target); written by the lease holder only (fenced), sent at least once.
-- state: pending (not sent yet, or retried at next_at), delivered, failed (gave up after events.retry_for).
-- The body is made once, when the row is made, so every attempt sends the same bytes.
CREATE TABLE deliveries (
    id           INTEGER PRIMARY KEY,
    event_id     INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    job_id       INTEGER,
    channel      TEXT NOT NULL CHECK (channel IN ('webhook', 'email')),
    hook         TEXT,                   -- the site hook's name (events.webhooks); NULL: the job's own notify
    address      TEXT NOT NULL,          -- URL or mail address
    body         TEXT NOT NULL CHECK (json_valid(body)),
    state        TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    next_at      TEXT NOT NULL,
    last_error   TEXT,
    delivered_at TEXT,
    UNIQUE (event_id, channel, address, hook)
) STRICT;
CREATE INDEX deliveries_due ON deliveries (next_at) WHERE state = 'pending';
CREATE INDEX deliveries_by_job ON deliveries (job_id, event_id) WHERE job_id IS NOT NULL;

-- Per channel, monotonically (for /metrics): delivered, failed for good, and attempts that failed.
CREATE TABLE delivery_counters (
    channel          TEXT PRIMARY KEY,
    delivered        INTEGER NOT NULL DEFAULT 0,
    failed           INTEGER NOT NULL DEFAULT 0,
    attempt_failures INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TRIGGER delivery_counted AFTER UPDATE OF attempts, state ON deliveries BEGIN
    INSERT INTO delivery_counters (channel, delivered, failed, attempt_failures)
    VALUES (new.channel, new.state = 'delivered' AND old.state != 'delivered',
            new.state = 'failed' AND old.state != 'failed',
            new.attempts > old.attempts AND new.state != 'delivered')
    ON CONFLICT (channel) DO UPDATE SET delivered = delivered + excluded.delivered, failed = failed + excluded.failed,
                                        attempt_failures = attempt_failures + excluded.attempt_failures;
END;

-- For the sqlite3 shell: what is still to be sent, and what failed.
CREATE VIEW pending_deliveries AS
    SELECT d.id, d.event_id, d.job_id, d.channel, coalesce(d.hook, 'job') AS hook, d.address, d.attempts,
           d.next_at, d.last_error
    FROM deliveries d WHERE d.state = 'pending' ORDER BY d.next_at;

-- Where the deliverer is in events: it starts after what exists now (an upgrade does not send the history).
INSERT INTO settings (key, value, updated_at, updated_by)
VALUES ('delivery_cursor', (SELECT coalesce(max(id), 0) FROM events), strftime('%Y-%m-%dT%H:%M:%S.000000Z', 'now'),
        'migration')
ON CONFLICT (key) DO NOTHING;
