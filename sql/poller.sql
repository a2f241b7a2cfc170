-- The poller lease and cycle records. The decision whether a worker may take the lease is made in Python
-- (metasched/engine/lease.py, a pure function of the row) inside the BEGIN IMMEDIATE transaction that reads
-- and writes it.

-- name: get_lease
SELECT * FROM poller_lease WHERE name = 'poller';

-- name: write_lease
-- Take (a new epoch) or renew (the same epoch) the lease.
INSERT INTO poller_lease (name, holder, acquired_at, renewed_at, expires_at, epoch, host, boot_id, pid,
                          pid_start, expires_mono)
VALUES ('poller', :holder, :acquired_at, :now, :expires_at, :epoch, :host, :boot_id, :pid, :pid_start,
        :expires_mono)
ON CONFLICT (name) DO UPDATE SET
    holder = excluded.holder, acquired_at = excluded.acquired_at, renewed_at = excluded.renewed_at,
    expires_at = excluded.expires_at, epoch = excluded.epoch, host = excluded.host, boot_id = excluded.boot_id,
    pid = excluded.pid, pid_start = excluded.pid_start, expires_mono = excluded.expires_mono;

-- name: release_lease
-- The row stays (its epoch must only ever grow); an empty holder is a free lease.
UPDATE poller_lease SET holder = '', expires_at = :now, expires_mono = 0
WHERE name = 'poller' AND holder = :holder;

-- name: lease_epoch
-- The fence: every write of the poller checks, in its own transaction, that it still holds this epoch.
SELECT holder, epoch FROM poller_lease WHERE name = 'poller';

-- name: insert_poll_cycle
INSERT INTO poll_cycles (holder, started_at, duration_ms, summary, errors)
VALUES (:holder, :started_at, :duration_ms, :summary, :errors);

-- name: prune_poll_cycles
DELETE FROM poll_cycles WHERE id <= (SELECT max(id) FROM poll_cycles) - :keep;

-- name: last_poll_cycle
SELECT * FROM poll_cycles ORDER BY id DESC LIMIT 1;
