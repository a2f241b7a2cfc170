-- Queries behind GET /metrics (metasched/metrics.py). Counts only: no user names leave through them.

-- name: metrics_dispatch_counts
-- Per queue: jobs the poller handed to their scheduler (DISPATCHING -> QUEUED, or straight to RUNNING for
-- schedulers without a native queue such as `local`) and dispatches that failed for good (refused, or given
-- up after poller.max_attempts). Counters kept by a trigger on job_events (migration 3): never decrease,
-- not even when retention removes old jobs.
SELECT queue_id, dispatched, failed FROM dispatch_counters;

-- name: metrics_poll_cycle_stats
-- The recorded cycles (the poller keeps the last retention.poll_cycles): how many, and their durations.
SELECT count(*) AS n, coalesce(sum(duration_ms), 0) AS sum_ms, coalesce(max(duration_ms), 0) AS max_ms
FROM poll_cycles;
