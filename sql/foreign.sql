-- Jobs submitted directly to the schedulers (see migration_0002_foreign_jobs.sql).

-- name: upsert_foreign_job
-- Seen this cycle: insert, or refresh what may change (state, start time, ...); first_seen stays.
INSERT INTO foreign_jobs (queue_id, native_id, owner, name, state, native_queue, start_time, first_seen, last_seen)
VALUES (:queue_id, :native_id, :owner, :name, :state, :native_queue, :start_time, :now, :now)
ON CONFLICT (queue_id, native_id) DO UPDATE SET
    owner = excluded.owner, name = excluded.name, state = excluded.state,
    native_queue = excluded.native_queue, start_time = coalesce(excluded.start_time, foreign_jobs.start_time),
    last_seen = excluded.last_seen;

-- name: delete_departed_foreign_jobs
-- Every row of this scheduler whose native id it did not list this cycle (:keep, a JSON array) has left
-- it. By set difference, not by last_seen: a clock step backwards must not keep departed jobs.
DELETE FROM foreign_jobs
WHERE queue_id = :queue_id AND native_id NOT IN (SELECT value FROM json_each(:keep));

-- name: list_foreign_jobs
-- Keyset pagination on id; every filter optional (NULL = any).
SELECT * FROM foreign_jobs
WHERE id > :after
  AND (:owner IS NULL OR owner = :owner)
  AND (:queue_id IS NULL OR queue_id = :queue_id)
ORDER BY id
LIMIT :limit;

-- name: list_foreign_jobs_of_owner
-- The same page for one owner (every non-admin listing), so the planner uses foreign_jobs_by_owner.
SELECT * FROM foreign_jobs
WHERE owner = :owner
  AND id > :after
  AND (:queue_id IS NULL OR queue_id = :queue_id)
ORDER BY id
LIMIT :limit;

-- name: count_foreign_jobs_by_queue_state
SELECT queue_id, state, count(*) AS n FROM foreign_jobs GROUP BY queue_id, state;
