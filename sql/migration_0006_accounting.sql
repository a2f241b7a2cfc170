-- Schema version 6: what a job used (issue 15). It comes after 4 (the spark type: queues rebuilt) and 5 (jobs.spec)
-- and depends on neither: it only adds columns, tables, indexes and a view of its own, and rebuilds nothing (the
-- queues CHECK of 4 and the spec column of 5 stay as they are).
--
-- jobs.acct_*: the job's accounting, recorded with its final state (metasched/lifecycle.py), as its
-- scheduler reported it: Grid Engine's qacct record, Slurm's scontrol / jobcomp record, the local wrapper's
-- rusage, YARN's application report; for what the scheduler does not report, the node agents' measurements
-- while the job ran (source "agent"). A field nobody reported stays NULL. acct_sources is NULL until the
-- job's accounting was recorded, then a JSON object naming the source of every field that has a value.
ALTER TABLE jobs ADD COLUMN acct_start_time TEXT;           -- UTC, the scheduler's own start
ALTER TABLE jobs ADD COLUMN acct_end_time TEXT;             -- UTC, the scheduler's own end
ALTER TABLE jobs ADD COLUMN acct_nodes TEXT;                -- where it ran, as the scheduler names them
ALTER TABLE jobs ADD COLUMN acct_wall_seconds REAL;
ALTER TABLE jobs ADD COLUMN acct_cpu_user_seconds REAL;
ALTER TABLE jobs ADD COLUMN acct_cpu_system_seconds REAL;
ALTER TABLE jobs ADD COLUMN acct_cpu_seconds REAL;          -- user + system
ALTER TABLE jobs ADD COLUMN acct_max_rss_bytes INTEGER;
ALTER TABLE jobs ADD COLUMN acct_exit_signal INTEGER;
ALTER TABLE jobs ADD COLUMN acct_sources TEXT CHECK (acct_sources IS NULL OR json_valid(acct_sources));
ALTER TABLE jobs ADD COLUMN acct_extra TEXT CHECK (acct_extra IS NULL OR json_valid(acct_extra));

-- History (GET /jobs?since=&until=, newest end first) and usage reports (GET /usage) walk finished jobs by
-- their end: all of them (admins) or one owner's.
CREATE INDEX jobs_history ON jobs (finished_at, id) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_history_by_owner ON jobs (owner, finished_at, id) WHERE finished_at IS NOT NULL;

-- The latest live measurement of every job the node agents saw running (one row per job, kept every cycle).
CREATE TABLE job_usage (
    job_id        INTEGER PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    at            TEXT NOT NULL,             -- UTC of the latest measurement
    nodes         TEXT NOT NULL CHECK (json_valid(nodes)),   -- JSON array: the nodes its processes were on
    cpu_seconds   REAL NOT NULL,             -- user + system of its processes so far (the largest total seen)
    cpu_percent   REAL,                      -- over the latest cycle, 100 = one core; NULL: no earlier measurement
    rss_bytes     INTEGER NOT NULL,          -- resident memory now
    max_rss_bytes INTEGER NOT NULL,          -- the largest seen
    pids          INTEGER NOT NULL,
    samples       INTEGER NOT NULL DEFAULT 0,    -- rows in job_samples
    stride        INTEGER NOT NULL DEFAULT 1     -- one sample stored every `stride` sample intervals
) STRICT;

-- Samples over time of each job (GET /jobs/{id}/metrics): at most one per metrics.job_sample_interval, at
-- most metrics.max_samples_per_job per job (when a job reaches it, every other sample goes and the stride
-- doubles), removed retention.metrics_days after they were taken.
CREATE TABLE job_samples (
    id          INTEGER PRIMARY KEY,
    job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at          TEXT NOT NULL,
    cpu_seconds REAL NOT NULL,
    cpu_percent REAL,
    rss_bytes   INTEGER NOT NULL,
    pids        INTEGER NOT NULL,
    nodes       TEXT NOT NULL CHECK (json_valid(nodes))
) STRICT;
CREATE INDEX job_samples_by_job ON job_samples (job_id, id);
CREATE INDEX job_samples_by_time ON job_samples (at);

-- The node's latest figures (cpu, memory and disk of the job filesystems in percent, load), and samples of
-- them over time (one per metrics.node_sample_interval).
ALTER TABLE nodes ADD COLUMN metrics TEXT CHECK (metrics IS NULL OR json_valid(metrics));
CREATE TABLE node_samples (
    id             INTEGER PRIMARY KEY,
    node_id        INTEGER NOT NULL REFERENCES nodes (id),
    at             TEXT NOT NULL,
    cpu_percent    REAL,
    memory_percent REAL,
    disk_percent   REAL,                     -- the fullest of the job filesystems
    load1          REAL,
    jobs           INTEGER                   -- jobs of ours whose processes the agent saw there
) STRICT;
CREATE INDEX node_samples_by_node ON node_samples (node_id, id);
CREATE INDEX node_samples_by_time ON node_samples (at);

-- The enforcement measurements of every cycle, kept: per node and scheduler, the CPU its group used and the
-- share the policy targeted, summed per bucket of metrics.share_bucket_seconds (UTC start of the bucket).
-- GET /usage compares them over a window.
CREATE TABLE share_samples (
    node_id        INTEGER NOT NULL,
    queue_id       INTEGER NOT NULL,
    bucket         TEXT NOT NULL,
    seconds        REAL NOT NULL,            -- measured span (the node's boot clock)
    cpu_seconds    REAL NOT NULL,            -- CPU the scheduler's group used in it
    target_seconds REAL NOT NULL,            -- the target share (percent) times seconds
    PRIMARY KEY (node_id, queue_id, bucket)
) STRICT, WITHOUT ROWID;
CREATE INDEX share_samples_by_bucket ON share_samples (bucket);

-- CPU seconds per scheduler, all nodes, since the database was made: a counter (GET /metrics), never
-- decreasing, not even when retention removes old samples.
CREATE TABLE queue_cpu (
    queue_id    INTEGER PRIMARY KEY,
    cpu_seconds REAL NOT NULL DEFAULT 0
) STRICT;

-- For the sqlite3 shell: what finished jobs used.
CREATE VIEW job_accounting AS
    SELECT j.id, j.owner, q.name AS queue, j.status, j.exit_code, j.acct_exit_signal AS exit_signal,
           j.acct_start_time AS start_time, j.acct_end_time AS end_time, j.acct_nodes AS nodes,
           j.acct_wall_seconds AS wall_seconds, j.acct_cpu_seconds AS cpu_seconds,
           j.acct_max_rss_bytes AS max_rss_bytes, j.acct_sources AS sources
    FROM jobs j JOIN queues q ON q.id = j.queue_id
    WHERE j.acct_sources IS NOT NULL
    ORDER BY j.finished_at DESC, j.id DESC;
