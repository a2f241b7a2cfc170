-- Schema version 2: jobs submitted directly to a scheduler (plain qsub / sbatch), not through us.
-- The poller refreshes them from each reachable scheduler's batched status call every cycle: a row is
-- upserted while the scheduler lists the job (pending or running) and deleted once it no longer does.
-- They are only ever observed: never dispatched, edited or cancelled by metasched.

CREATE TABLE foreign_jobs (
    id           INTEGER PRIMARY KEY,
    queue_id     INTEGER NOT NULL REFERENCES queues (id),
    native_id    TEXT NOT NULL,             -- the scheduler's own job id
    owner        TEXT NOT NULL,             -- the user the scheduler says owns it
    name         TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('PENDING', 'RUNNING')),
    native_queue TEXT NOT NULL DEFAULT '',  -- the scheduler's queue or partition
    start_time   TEXT,                      -- when it started running, when the scheduler says
    first_seen   TEXT NOT NULL,
    last_seen    TEXT NOT NULL,
    UNIQUE (queue_id, native_id)
) STRICT;
CREATE INDEX foreign_jobs_by_owner ON foreign_jobs (owner, id);

CREATE VIEW foreign_jobs_per_queue_state AS
    SELECT q.name AS queue, f.state, count(*) AS jobs
    FROM foreign_jobs f JOIN queues q ON q.id = f.queue_id
    GROUP BY q.name, f.state
    ORDER BY q.name, f.state;
