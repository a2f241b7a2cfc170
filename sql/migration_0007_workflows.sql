-- Schema version 7: workflows (issue 16): job arrays, dependencies between jobs, why a job waits.
-- Applied after 0004 (the spark type: queues rebuilt) and 0005 (jobs.spec); version 6 is another branch's, and a
-- database without it goes from 5 straight to 7. Only columns, a table, a trigger and a view are added here: no
-- table is rebuilt, so jobs.spec and the queues' CHECK (spark included) stay as they are.

-- jobs.array_spec: the array a job stands for, as submitted and normalised ("1-1000:2%50": tasks 1, 3, ...,
-- 999, at most 50 running at once); NULL for a plain job. The array is ONE native submission (qsub -t,
-- sbatch --array; the local backend's supervisor); its tasks are tracked one by one in array_tasks.
-- jobs.depends_on: the job's dependencies, JSON [[kind, job id, task or null], ...] (kind: ok, notok, any,
-- started); NULL: none. Evaluated by the poller, so a job may wait for jobs of any queue and scheduler.
ALTER TABLE jobs ADD COLUMN array_spec TEXT;
ALTER TABLE jobs ADD COLUMN depends_on TEXT CHECK (depends_on IS NULL OR json_valid(depends_on));

-- One row per task of an array, created with the array. Its state follows the task in the scheduler
-- (QUEUED, RUNNING, then its own end, exit code and times from the scheduler's accounting). A task's changes
-- are written like a job's (metasched/lifecycle.py): a versioned UPDATE plus an event (job_events.task).
CREATE TABLE array_tasks (
    job_id           INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    task             INTEGER NOT NULL CHECK (task >= 0),   -- the task index ($METASCHED_ARRAY_TASK_ID)
    status           TEXT NOT NULL CHECK (status IN ('TO_BE_QUEUED', 'HELD', 'QUEUED', 'RUNNING', 'COMPLETED',
                                                     'ERROR', 'CANCELLED')),
    native_id        TEXT,                   -- the task in its scheduler (Grid Engine N.T, Slurm's own id, a pid)
    exit_code        INTEGER,
    reason           TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0 CHECK (cancel_requested IN (0, 1)),
    started_at       TEXT,
    finished_at      TEXT,
    updated_at       TEXT NOT NULL,
    version          INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (job_id, task)
) STRICT, WITHOUT ROWID;
CREATE INDEX array_tasks_by_status ON array_tasks (job_id, status);

-- A task's events are the array job's events with the task's index (NULL: the job itself).
ALTER TABLE job_events ADD COLUMN task INTEGER;

-- Dispatch counters count native submissions: an array is one, its tasks are none.
DROP TRIGGER dispatches_counted;
CREATE TRIGGER dispatches_counted AFTER INSERT ON job_events
WHEN new.actor = 'poller' AND new.old_status = 'DISPATCHING' AND new.task IS NULL
     AND (new.new_status IN ('QUEUED', 'RUNNING')
          OR (new.new_status = 'ERROR' AND (new.reason LIKE 'scheduler refused%' OR new.reason LIKE 'gave up%')))
BEGIN
    INSERT INTO dispatch_counters (queue_id, dispatched, failed)
        SELECT queue_id, new.new_status != 'ERROR', new.new_status = 'ERROR' FROM jobs WHERE id = new.job_id
    ON CONFLICT (queue_id) DO UPDATE SET dispatched = dispatched + excluded.dispatched,
                                         failed = failed + excluded.failed;
END;

-- queues.unreachable_since: when its status call first failed in the current run of failures (NULL: it
-- answered last time), so that "why is my job waiting" can say since when.
ALTER TABLE queues ADD COLUMN unreachable_since TEXT;

-- For the sqlite3 shell: tasks per array and state.
CREATE VIEW array_tasks_per_state AS
    SELECT t.job_id, j.owner, t.status, count(*) AS tasks
    FROM array_tasks t JOIN jobs j ON j.id = t.job_id
    GROUP BY t.job_id, t.status
    ORDER BY t.job_id, t.status;
