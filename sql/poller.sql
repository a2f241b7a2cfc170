-- name: acquire_lease
-- One statement acquires a free or expired lease, renews our own, and refuses while another holds it:
-- it returns a row only when :holder holds the lease afterwards.
INSERT INTO poller_lease (name, holder, acquired_at, renewed_at, expires_at)
VALUES ('poller', :holder, :now, :now, :expires_at)
ON CONFLICT (name) DO UPDATE SET
    holder = excluded.holder,
    acquired_at = CASE WHEN poller_lease.holder = excluded.holder THEN poller_lease.acquired_at ELSE excluded.acquired_at END,
    renewed_at = excluded.renewed_at,
    expires_at = excluded.expires_at
WHERE poller_lease.holder = excluded.holder OR poller_lease.expires_at < :now
RETURNING holder, acquired_at;

-- name: release_lease
DELETE FROM poller_lease WHERE name = 'poller' AND holder = :holder;

-- name: get_lease
SELECT holder, acquired_at, renewed_at, expires_at FROM poller_lease WHERE name = 'poller';

-- name: insert_poll_cycle
INSERT INTO poll_cycles (holder, started_at, duration_ms, summary, errors)
VALUES (:holder, :started_at, :duration_ms, :summary, :errors);

-- name: prune_poll_cycles
DELETE FROM poll_cycles WHERE id <= (SELECT max(id) FROM poll_cycles) - :keep;

-- name: last_poll_cycle
SELECT * FROM poll_cycles ORDER BY id DESC LIMIT 1;
