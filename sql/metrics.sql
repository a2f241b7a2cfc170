-- Queries behind GET /metrics (metasched/metrics.py). Counts only: no user names leave through them.

-- name: metrics_dispatch_counts
-- Per queue: jobs the poller handed to their scheduler (every transition out of DISPATCHING into QUEUED,
-- or straight into RUNNING for schedulers without a native queue such as `local`) and submissions the scheduler refused (transitions to ERROR whose reason starts
-- 'scheduler refused'). Both are counters: event rows are only ever added.
SELECT j.queue_id AS queue_id,
       sum(e.old_status = 'DISPATCHING' AND e.new_status IN ('QUEUED', 'RUNNING')) AS dispatched,
       sum(e.new_status = 'ERROR' AND e.reason LIKE 'scheduler refused%') AS refused
FROM job_events e JOIN jobs j ON j.id = e.job_id
WHERE e.actor = 'poller' AND e.new_status IN ('QUEUED', 'RUNNING', 'ERROR')
GROUP BY j.queue_id;

-- name: metrics_poll_cycle_stats
-- The recorded cycles (the poller keeps the last 1000): how many, and their durations.
SELECT count(*) AS n, coalesce(sum(duration_ms), 0) AS sum_ms, coalesce(max(duration_ms), 0) AS max_ms
FROM poll_cycles;
