-- name: insert_job
INSERT INTO jobs (name, queue_id, owner, status, path, options, pwd, created_at, updated_at)
VALUES (:name, :queue_id, :owner, :status, :path, :options, :pwd, :now, :now)
RETURNING *;

-- name: get_job
SELECT * FROM jobs WHERE id = :id;

-- name: list_jobs
-- Keyset pagination on id; every filter is optional (NULL = any). :statuses is a JSON array.
SELECT * FROM jobs
WHERE id > :after
  AND (:owner IS NULL OR owner = :owner)
  AND (:queue_id IS NULL OR queue_id = :queue_id)
  AND (:statuses IS NULL OR status IN (SELECT value FROM json_each(:statuses)))
ORDER BY id
LIMIT :limit;

-- name: list_jobs_of_owner
-- The same page for one owner (every non-admin listing). A separate statement because the planner
-- cannot use jobs_by_owner (owner, id) through ":owner IS NULL OR owner = :owner": it walked the whole
-- table by id, so a user with a few jobs among 100,000 paid for all of them.
SELECT * FROM jobs
WHERE owner = :owner
  AND id > :after
  AND (:queue_id IS NULL OR queue_id = :queue_id)
  AND (:statuses IS NULL OR status IN (SELECT value FROM json_each(:statuses)))
ORDER BY id
LIMIT :limit;

-- name: update_job_fields
-- Edit before dispatch; the version guards against a concurrent change.
UPDATE jobs SET name = :name, queue_id = :queue_id, path = :path, options = :options, pwd = :pwd,
                updated_at = :now, version = version + 1
WHERE id = :id AND status IN ('TO_BE_QUEUED', 'HELD')
RETURNING *;

-- name: set_job_status
UPDATE jobs SET status = :status, reason = :reason, updated_at = :now, version = version + 1,
                submitted_at = CASE WHEN :status IN ('QUEUED', 'RUNNING') AND submitted_at IS NULL THEN :now ELSE submitted_at END,
                started_at   = CASE WHEN :status = 'RUNNING' AND started_at IS NULL THEN coalesce(:started_at, :now)
                                    WHEN :status IN ('COMPLETED', 'ERROR', 'CANCELLED') AND started_at IS NULL THEN :started_at
                                    ELSE started_at END,
                finished_at  = CASE WHEN :status IN ('COMPLETED', 'ERROR', 'CANCELLED') THEN :now ELSE finished_at END,
                exit_code    = coalesce(:exit_code, exit_code)
WHERE id = :id AND status = :old_status
RETURNING *;

-- name: set_scheduler_job_id
UPDATE jobs SET scheduler_job_id = :scheduler_job_id, updated_at = :now, version = version + 1
WHERE id = :id
RETURNING *;

-- name: request_cancel
UPDATE jobs SET cancel_requested = 1, updated_at = :now, version = version + 1
WHERE id = :id AND status IN ('DISPATCHING', 'QUEUED', 'RUNNING')
RETURNING *;

-- name: count_final_check
UPDATE jobs SET final_checks = final_checks + 1 WHERE id = :id RETURNING final_checks;

-- name: insert_job_event
INSERT INTO job_events (job_id, at, old_status, new_status, actor, reason)
VALUES (:job_id, :now, :old_status, :new_status, :actor, :reason);

-- name: list_job_events
SELECT id, at, old_status, new_status, actor, reason FROM job_events WHERE job_id = :job_id ORDER BY id;

-- name: count_jobs_by_queue_status
SELECT queue_id, status, count(*) AS n FROM jobs GROUP BY queue_id, status;

-- name: list_jobs_in_states
-- The poller's working set: every job that is not final, oldest first.
SELECT * FROM jobs
WHERE status IN (SELECT value FROM json_each(:statuses))
ORDER BY id;

-- name: latest_job_change
-- Cheap "is there new work?" probe for the poller between cycles: new, released or edited jobs, and cancels
-- of jobs not yet over. Only the active states are read (through jobs_by_status), never the finished history.
SELECT coalesce(max(updated_at), '') AS at, count(*) AS n FROM jobs
WHERE status IN ('TO_BE_QUEUED', 'DISPATCHING', 'HELD', 'QUEUED', 'RUNNING')
  AND (status IN ('TO_BE_QUEUED', 'DISPATCHING') OR cancel_requested = 1);

-- name: set_waiting_reason
-- Why a job still waits in our queue; written only when it changed (no event: not a transition).
UPDATE jobs SET reason = :reason
WHERE id = :id AND status = 'TO_BE_QUEUED' AND reason IS NOT :reason;

-- name: set_job_reason
-- A note on an active job without a state change (e.g. waiting for accounting, dispatch outcome unknown).
UPDATE jobs SET reason = :reason WHERE id = :id;
