-- Workflows (schema version 7): the tasks of array jobs, the jobs others depend on, why a job waits.
-- A task changes only through metasched/lifecycle.py, like a job: a versioned UPDATE plus its event.

-- name: insert_array_task
-- Run with executemany: one row per task, all made with the array in its submit transaction.
INSERT INTO array_tasks (job_id, task, status, updated_at) VALUES (:job_id, :task, :status, :now);

-- name: get_array_task
SELECT * FROM array_tasks WHERE job_id = :job_id AND task = :task;

-- name: list_array_tasks
-- One page of an array's tasks, by index; :statuses is a JSON array or NULL (any).
SELECT * FROM array_tasks
WHERE job_id = :job_id AND task > :after
  AND (:statuses IS NULL OR status IN (SELECT value FROM json_each(:statuses)))
ORDER BY task
LIMIT :limit;

-- name: list_open_array_tasks
-- The poller's working set of tasks: every task of these arrays (a JSON array of job ids) not ended yet.
SELECT * FROM array_tasks
WHERE job_id IN (SELECT value FROM json_each(:job_ids))
  AND status IN ('TO_BE_QUEUED', 'HELD', 'QUEUED', 'RUNNING')
ORDER BY job_id, task;

-- name: count_array_tasks
-- Tasks per state of these arrays (a JSON array of job ids): what a listing shows on an array's one line.
SELECT job_id, status, count(*) AS n FROM array_tasks
WHERE job_id IN (SELECT value FROM json_each(:job_ids))
GROUP BY job_id, status;

-- name: update_array_task
-- The one statement that changes a task's state, only from the version the writer read.
UPDATE array_tasks SET status = :status, reason = :reason, updated_at = :now, version = version + 1,
    native_id = coalesce(:native_id, native_id),
    exit_code = coalesce(:exit_code, exit_code),
    started_at = CASE WHEN :status = 'RUNNING' AND started_at IS NULL THEN coalesce(:started_at, :now)
                      WHEN :status IN ('COMPLETED', 'ERROR', 'CANCELLED') AND started_at IS NULL THEN :started_at
                      ELSE started_at END,
    finished_at = CASE WHEN :status IN ('COMPLETED', 'ERROR', 'CANCELLED') THEN :now ELSE finished_at END,
    cancel_requested = max(cancel_requested, :cancel_requested)
WHERE job_id = :job_id AND task = :task AND version = :version
RETURNING *;

-- name: request_array_task_cancel
-- A task in its scheduler's queue or running: the poller cancels it there.
UPDATE array_tasks SET cancel_requested = 1, updated_at = :now, version = version + 1
WHERE job_id = :job_id AND task = :task AND version = :version AND status IN ('QUEUED', 'RUNNING')
RETURNING *;

-- name: move_array_tasks
-- Every task of an array that is in one of :from (a JSON array of states) moves to :status at once: the
-- array was submitted, held, released or ended as a whole (one statement; one event, on the job).
UPDATE array_tasks SET status = :status, reason = :reason, updated_at = :now, version = version + 1,
    finished_at = CASE WHEN :status IN ('COMPLETED', 'ERROR', 'CANCELLED') THEN :now ELSE finished_at END
WHERE job_id = :job_id AND status IN (SELECT value FROM json_each(:from));

-- name: array_task_ends
-- How an array's ended tasks ended: their count, how many not COMPLETED, the highest exit code and the first
-- task that did not complete (for the array's own end and reason).
SELECT count(*) AS ended,
       sum(status != 'COMPLETED') AS failed,
       sum(status = 'ERROR') AS errors,
       max(exit_code) AS max_exit,
       min(CASE WHEN status != 'COMPLETED' THEN task END) AS first_failed
FROM array_tasks WHERE job_id = :job_id AND status IN ('COMPLETED', 'ERROR', 'CANCELLED');

-- name: dependency_targets
-- The jobs others depend on (a JSON array of ids): their state and start, and for arrays how many tasks ended
-- otherwise than COMPLETED (after-ok on an array can no longer be met once one did).
SELECT j.id, j.owner, j.status, j.started_at, j.array_spec,
       CASE WHEN j.array_spec IS NULL THEN 0
            ELSE (SELECT count(*) FROM array_tasks t WHERE t.job_id = j.id AND t.status IN ('ERROR', 'CANCELLED'))
       END AS failed_tasks
FROM jobs j WHERE j.id IN (SELECT value FROM json_each(:ids));

-- name: dependency_task_targets
-- The tasks others depend on (a JSON array of [job id, task] pairs).
SELECT job_id, task, status, started_at FROM array_tasks
WHERE (job_id, task) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:pairs));

-- name: list_waiting_dependants
-- Jobs waiting in our queue (or held there) that depend on others: the poller evaluates their dependencies.
SELECT * FROM jobs WHERE status IN ('TO_BE_QUEUED', 'HELD') AND depends_on IS NOT NULL ORDER BY id;

-- name: list_queue_ahead
-- The jobs waiting in a queue before a job (submission order): how far it is from the front.
SELECT id, owner FROM jobs WHERE status = 'TO_BE_QUEUED' AND queue_id = :queue_id AND id < :id ORDER BY id;

-- name: list_pending_jobs
-- Every job waiting in our queue, the least a policy needs to decide about it (why, and the dry run).
SELECT id, queue_id, owner, name, depends_on, reason FROM jobs WHERE status = 'TO_BE_QUEUED' ORDER BY id;

-- name: set_array_spec
-- An array not dispatched yet is to be submitted held (/held: some of its tasks were held or cancelled): a
-- change of the job (a new version), so that a dispatch decided on the old one is decided again.
UPDATE jobs SET array_spec = :array_spec, updated_at = :now, version = version + 1
WHERE id = :id AND version = :version AND status IN ('TO_BE_QUEUED', 'HELD')
RETURNING *;
