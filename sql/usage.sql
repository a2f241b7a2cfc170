-- What jobs used (issue 15): accounting, live measurements, history, usage reports, enforcement samples.

-- name: record_job_accounting
-- The job's accounting, written by metasched/lifecycle.py in the transaction that records its final state.
UPDATE jobs SET acct_start_time = :start_time, acct_end_time = :end_time, acct_nodes = :nodes,
                acct_wall_seconds = :wall_seconds, acct_cpu_user_seconds = :cpu_user_seconds,
                acct_cpu_system_seconds = :cpu_system_seconds, acct_cpu_seconds = :cpu_seconds,
                acct_max_rss_bytes = :max_rss_bytes, acct_exit_signal = :exit_signal,
                acct_sources = :sources, acct_extra = :extra
WHERE id = :id;

-- name: list_job_history
-- Finished jobs, newest end first (GET /jobs?since=&until=): keyset on (finished_at, id), descending. Every
-- bound is given (the widest by default) so that the walk is a range of jobs_history.
SELECT * FROM jobs
WHERE finished_at IS NOT NULL AND finished_at >= :since AND finished_at < :until
  AND (finished_at, id) < (:before_at, :before_id)
  AND (:queue_id IS NULL OR queue_id = :queue_id)
  AND (:statuses IS NULL OR status IN (SELECT value FROM json_each(:statuses)))
ORDER BY finished_at DESC, id DESC
LIMIT :limit;

-- name: list_job_history_of_owner
-- The same for one owner (every non-admin listing), through jobs_history_by_owner.
SELECT * FROM jobs
WHERE owner = :owner AND finished_at IS NOT NULL AND finished_at >= :since AND finished_at < :until
  AND (finished_at, id) < (:before_at, :before_id)
  AND (:queue_id IS NULL OR queue_id = :queue_id)
  AND (:statuses IS NULL OR status IN (SELECT value FROM json_each(:statuses)))
ORDER BY finished_at DESC, id DESC
LIMIT :limit;

-- name: usage_jobs
-- The jobs that ended in [since, until) (GET /usage): what the report sums, per job.
SELECT id, owner, queue_id, status, created_at, started_at, acct_cpu_seconds, acct_wall_seconds FROM jobs
WHERE finished_at IS NOT NULL AND finished_at >= :since AND finished_at < :until;

-- name: usage_jobs_of_owner
SELECT id, owner, queue_id, status, created_at, started_at, acct_cpu_seconds, acct_wall_seconds FROM jobs
WHERE owner = :owner AND finished_at IS NOT NULL AND finished_at >= :since AND finished_at < :until;

-- name: upsert_job_usage
-- The latest measurement of a running job (run for every measured job of a cycle at once). CPU time and the
-- peak memory only grow; nodes accumulate; :sampled (0 or 1) counts the sample stored beside it.
INSERT INTO job_usage (job_id, at, nodes, cpu_seconds, cpu_percent, rss_bytes, max_rss_bytes, pids, samples)
VALUES (:job_id, :at, :nodes, :cpu_seconds, :cpu_percent, :rss_bytes, :rss_bytes, :pids, :sampled)
ON CONFLICT (job_id) DO UPDATE SET
    at = excluded.at,
    nodes = CASE WHEN excluded.nodes = job_usage.nodes THEN job_usage.nodes
                 ELSE (SELECT json_group_array(value) FROM (SELECT value FROM json_each(job_usage.nodes)
                                                           UNION SELECT value FROM json_each(excluded.nodes))) END,
    cpu_seconds = max(job_usage.cpu_seconds, excluded.cpu_seconds),
    cpu_percent = excluded.cpu_percent,
    rss_bytes = excluded.rss_bytes,
    max_rss_bytes = max(job_usage.max_rss_bytes, excluded.rss_bytes),
    pids = excluded.pids,
    samples = job_usage.samples + excluded.samples;

-- name: get_job_usage
SELECT * FROM job_usage WHERE job_id = :job_id;

-- name: list_job_usage
-- The latest measurements of these jobs (a JSON array of ids): a page of GET /jobs?include=metrics.
SELECT * FROM job_usage WHERE job_id IN (SELECT value FROM json_each(:ids));

-- name: insert_job_sample
INSERT INTO job_samples (job_id, at, cpu_seconds, cpu_percent, rss_bytes, pids, nodes)
VALUES (:job_id, :at, :cpu_seconds, :cpu_percent, :rss_bytes, :pids, :nodes);

-- name: thin_job_samples
-- Downsampling: a job that reached metrics.max_samples_per_job keeps every other of its samples (the first
-- included), and from then on stores one sample every twice as many intervals.
DELETE FROM job_samples WHERE id IN (
    SELECT id FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM job_samples WHERE job_id = :job_id)
    WHERE n % 2 = 0);

-- name: thinned_job_samples
UPDATE job_usage SET samples = (SELECT count(*) FROM job_samples WHERE job_id = :job_id), stride = stride * 2
WHERE job_id = :job_id;

-- name: list_job_samples
SELECT * FROM job_samples
WHERE job_id = :job_id AND id > :after AND at >= :since AND at < :until
ORDER BY id
LIMIT :limit;

-- name: prune_job_samples
-- Retention: samples taken before :before, a bounded number at a time.
DELETE FROM job_samples WHERE id IN (SELECT id FROM job_samples WHERE at < :before ORDER BY at LIMIT :limit);

-- name: set_node_metrics
UPDATE nodes SET metrics = :metrics WHERE id = :id;

-- name: insert_node_sample
INSERT INTO node_samples (node_id, at, cpu_percent, memory_percent, disk_percent, load1, jobs)
VALUES (:node_id, :at, :cpu_percent, :memory_percent, :disk_percent, :load1, :jobs);

-- name: list_node_samples
SELECT * FROM node_samples
WHERE node_id = :node_id AND id > :after AND at >= :since AND at < :until
ORDER BY id
LIMIT :limit;

-- name: prune_node_samples
DELETE FROM node_samples WHERE id IN (SELECT id FROM node_samples WHERE at < :before ORDER BY at LIMIT :limit);

-- name: add_share_sample
-- One cycle's enforcement measurement of one scheduler on one node, summed into its bucket.
INSERT INTO share_samples (node_id, queue_id, bucket, seconds, cpu_seconds, target_seconds)
VALUES (:node_id, :queue_id, :bucket, :seconds, :cpu_seconds, :target_seconds)
ON CONFLICT (node_id, queue_id, bucket) DO UPDATE SET
    seconds = seconds + excluded.seconds, cpu_seconds = cpu_seconds + excluded.cpu_seconds,
    target_seconds = target_seconds + excluded.target_seconds;

-- name: share_totals
-- Per node and scheduler, the measured spans, CPU and target of the buckets that start in [since, until)
-- (GET /usage passes a since one bucket earlier: every bucket that overlaps its window).
SELECT node_id, queue_id, sum(seconds) AS seconds, sum(cpu_seconds) AS cpu_seconds,
       sum(target_seconds) AS target_seconds
FROM share_samples WHERE bucket >= :since AND bucket < :until
GROUP BY node_id, queue_id
ORDER BY node_id, queue_id;

-- name: prune_share_samples
DELETE FROM share_samples WHERE (node_id, queue_id, bucket) IN (
    SELECT node_id, queue_id, bucket FROM share_samples WHERE bucket < :before LIMIT :limit);

-- name: add_queue_cpu
INSERT INTO queue_cpu (queue_id, cpu_seconds) VALUES (:queue_id, :cpu_seconds)
ON CONFLICT (queue_id) DO UPDATE SET cpu_seconds = cpu_seconds + excluded.cpu_seconds;

-- name: queue_cpu_totals
SELECT queue_id, cpu_seconds FROM queue_cpu;
