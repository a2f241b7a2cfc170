-- Events out (migration 8): the event log, what jobs asked to be told, deliveries.

-- name: latest_event_id
-- The newest event's id (the stream's and the deliverer's cheap "anything new?" probe).
SELECT coalesce(max(id), 0) AS id FROM events;

-- name: event_feed
-- Events after a cursor, oldest first, with what a reader needs to show them. :owner NULL: everyone's job
-- events; else only that user's, and every cluster event. The exit code is shown once the event is final.
SELECT v.id, v.kind, v.job_id, v.owner,
       coalesce(je.at, ce.at) AS at, coalesce(je.actor, ce.actor) AS actor,
       je.old_status, je.new_status, je.reason, j.name AS job_name, j.queue_id,
       CASE WHEN je.new_status IN ('COMPLETED', 'ERROR', 'CANCELLED') THEN j.exit_code END AS exit_code,
       ce.kind AS cluster_kind, ce.detail
FROM events v
LEFT JOIN job_events je ON v.kind = 'job' AND je.id = v.ref_id
LEFT JOIN jobs j ON j.id = v.job_id
LEFT JOIN cluster_events ce ON v.kind = 'cluster' AND ce.id = v.ref_id
WHERE v.id > :after AND (:owner IS NULL OR v.owner = :owner OR v.kind = 'cluster')
ORDER BY v.id
LIMIT :limit;

-- name: job_event_ids
-- job_events.id -> events.id, for one job.
SELECT ref_id, id FROM events WHERE job_id = :job_id AND kind = 'job';

-- name: insert_job_notify
INSERT INTO job_notify (job_id, on_what, email, webhook, secret) VALUES (:job_id, :on_what, :email, :webhook, :secret);

-- name: get_job_notify
SELECT * FROM job_notify WHERE job_id = :job_id;

-- name: job_notify_among
SELECT * FROM job_notify WHERE job_id IN (SELECT value FROM json_each(:ids));

-- name: insert_delivery
-- Once per (event, target): making the rows again after a takeover changes nothing.
INSERT INTO deliveries (event_id, job_id, channel, hook, address, body, created_at, next_at)
VALUES (:event_id, :job_id, :channel, :hook, :address, :body, :now, :now)
ON CONFLICT (event_id, channel, address, hook) DO NOTHING;

-- name: due_deliveries
-- What is to be sent now, oldest first (with the job's webhook secret for the job's own deliveries).
SELECT d.*, n.secret FROM deliveries d
LEFT JOIN job_notify n ON d.hook IS NULL AND n.job_id = d.job_id
WHERE d.state = 'pending' AND d.next_at <= :now
ORDER BY d.next_at, d.id
LIMIT :limit;

-- name: next_delivery_at
SELECT min(next_at) AS at FROM deliveries WHERE state = 'pending';

-- name: record_delivery
UPDATE deliveries SET state = :state, attempts = :attempts, next_at = :next_at, last_error = :last_error,
                      delivered_at = :delivered_at
WHERE id = :id AND state = 'pending';

-- name: list_job_deliveries
SELECT d.*, NULL AS secret FROM deliveries d WHERE d.job_id = :job_id ORDER BY d.event_id, d.id;

-- name: delivery_counts
-- /metrics: per channel, delivered and failed for good (trigger-kept), attempts that failed, and pending now.
SELECT c.channel, c.delivered, c.failed, c.attempt_failures,
       (SELECT count(*) FROM deliveries d WHERE d.state = 'pending' AND d.channel = c.channel) AS pending
FROM delivery_counters c;
