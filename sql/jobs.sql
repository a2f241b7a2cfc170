-- name: insert_job
INSERT INTO jobs (name, queue_id, owner, status, path, options, pwd, token, spec, array_spec, depends_on,
                  created_at, updated_at)
VALUES (:name, :queue_id, :owner, :status, :path, :options, :pwd, :token, :spec, :array_spec, :depends_on, :now,
        :now)
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

-- name: list_jobs_newest
-- The same page newest first: ids below :before (NULL: from the newest).
SELECT * FROM jobs
WHERE (:before IS NULL OR id < :before)
  AND (:owner IS NULL OR owner = :owner)
  AND (:queue_id IS NULL OR queue_id = :queue_id)
  AND (:statuses IS NULL OR status IN (SELECT value FROM json_each(:statuses)))
ORDER BY id DESC
LIMIT :limit;

-- name: list_jobs_of_owner_newest
-- Newest first for one owner (jobs_by_owner (owner, id), walked backwards).
SELECT * FROM jobs
WHERE owner = :owner
  AND (:before IS NULL OR id < :before)
  AND (:queue_id IS NULL OR queue_id = :queue_id)
  AND (:statuses IS NULL OR status IN (SELECT value FROM json_each(:statuses)))
ORDER BY id DESC
LIMIT :limit;

-- name: update_job_fields
-- Edit before dispatch, only from the version the caller read (metasched/lifecycle.py).
UPDATE jobs SET name = :name, queue_id = :queue_id, path = :path, options = :options, pwd = :pwd,
                spec = :spec, depends_on = :depends_on, updated_at = :now, version = version + 1
WHERE id = :id AND version = :version AND status IN ('TO_BE_QUEUED', 'HELD')
RETURNING *;

-- name: update_job
-- The one statement that changes a job's state (metasched/lifecycle.py writes it with its event): only from
-- the version the writer read, so that a decision made on an older read changes nothing.
UPDATE jobs SET status = :status, reason = :reason, updated_at = :now, version = version + 1,
                scheduler_job_id = coalesce(:scheduler_job_id, scheduler_job_id),
                attempts = attempts + :attempt,
                submitted_at = CASE WHEN :status IN ('QUEUED', 'RUNNING') AND submitted_at IS NULL THEN :now ELSE submitted_at END,
                started_at   = CASE WHEN :status = 'RUNNING' AND started_at IS NULL THEN coalesce(:started_at, :now)
                                    WHEN :status IN ('COMPLETED', 'ERROR', 'CANCELLED') AND started_at IS NULL THEN :started_at
                                    ELSE started_at END,
                finished_at  = CASE WHEN :status IN ('COMPLETED', 'ERROR', 'CANCELLED') THEN :now ELSE finished_at END,
                exit_code    = coalesce(:exit_code, exit_code)
WHERE id = :id AND version = :version
RETURNING *;

-- name: request_cancel
UPDATE jobs SET cancel_requested = 1, updated_at = :now, version = version + 1
WHERE id = :id AND version = :version AND status IN ('DISPATCHING', 'QUEUED', 'RUNNING')
RETURNING *;

-- name: note_job
-- A note on a job without a state change (why it waits, waiting for accounting, ...): written only when it
-- changed and only on the version it is about; not a new version (it is not a change of the job).
UPDATE jobs SET reason = :reason WHERE id = :id AND version = :version AND reason IS NOT :reason;

-- name: insert_job_event
INSERT INTO job_events (job_id, at, old_status, new_status, actor, reason, task)
VALUES (:job_id, :now, :old_status, :new_status, :actor, :reason, :task);

-- name: list_job_events
-- :task NULL: the job's own events; a task index: that task's (an array's tasks have their own histories).
SELECT id, at, old_status, new_status, actor, reason, task FROM job_events
WHERE job_id = :job_id AND task IS :task
ORDER BY id;

-- name: count_jobs_by_queue_status
-- Kept by triggers (migration 3): a few rows, whatever the size of the history.
SELECT queue_id, status, n FROM job_counts WHERE n > 0;

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

-- name: prune_finished_jobs
-- Retention: the oldest finished jobs (and, by ON DELETE CASCADE, their events and tasks), a bounded number at a
-- time. The newest job always stays: SQLite gives a new row max(id) + 1, so job ids are never reused. A job that
-- a waiting job depends on stays too, however old (and whatever the clock says): its end is what releases or
-- cancels the dependant.
DELETE FROM jobs WHERE id IN (
    SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < :before
                          AND id < (SELECT max(id) FROM jobs)
                          AND id NOT IN (SELECT json_extract(d.value, '$[1]')
                                         FROM jobs w, json_each(w.depends_on) d
                                         WHERE w.status IN ('TO_BE_QUEUED', 'HELD') AND w.depends_on IS NOT NULL)
    ORDER BY finished_at LIMIT :limit);

-- name: cancel_requested_among
-- Of these jobs (a JSON array of ids), those whose cancel was requested: checked right before their submit.
SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(:ids)) AND cancel_requested = 1;
