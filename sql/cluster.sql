-- name: get_queue_by_name
SELECT * FROM queues WHERE name = :name;

-- name: insert_queue
INSERT INTO queues (name, type, master_node_id, weight, position, created_at)
VALUES (:name, :type, :master_node_id, :weight, :position, :now)
RETURNING *;

-- name: update_queue_config
UPDATE queues SET type = :type, master_node_id = :master_node_id, weight = :weight, position = :position
WHERE id = :id;

-- name: unlist_queues
-- Queues no longer in the config keep their id and jobs but have no position.
UPDATE queues SET position = NULL WHERE id NOT IN (SELECT value FROM json_each(:keep));

-- name: list_queues
SELECT * FROM queues WHERE position IS NOT NULL ORDER BY position;

-- name: get_queue
SELECT * FROM queues WHERE id = :id;

-- name: set_queue_health
-- unreachable_since: the first failed check of the current run of failures (kept while it lasts).
UPDATE queues SET reachable = :reachable, last_error = :last_error, checked_at = :now,
                  unreachable_since = CASE WHEN :reachable = 0 THEN coalesce(unreachable_since, :now) END
WHERE id = :id;

-- name: set_queue_usage
UPDATE queues SET usage = :usage WHERE id = :id;

-- name: get_node_by_address
SELECT * FROM nodes WHERE address = :address AND port = :port;

-- name: insert_node
INSERT INTO nodes (address, port, transport, position) VALUES (:address, :port, :transport, :position)
RETURNING *;

-- name: update_node_config
UPDATE nodes SET transport = :transport, position = :position WHERE id = :id;

-- name: unlist_nodes
UPDATE nodes SET position = NULL WHERE id NOT IN (SELECT value FROM json_each(:keep));

-- name: list_nodes
SELECT * FROM nodes WHERE position IS NOT NULL ORDER BY position;

-- name: get_node
SELECT * FROM nodes WHERE id = :id AND position IS NOT NULL;

-- name: set_node_health
UPDATE nodes SET reachable = :reachable, last_seen = coalesce(:last_seen, last_seen), last_error = :last_error,
                 checked_at = :now, load1 = coalesce(:load1, load1), load5 = coalesce(:load5, load5),
                 load15 = coalesce(:load15, load15), ncpus = coalesce(:ncpus, ncpus),
                 enforcement = coalesce(:enforcement, enforcement)
WHERE id = :id;

-- name: get_setting
SELECT value, updated_at, updated_by FROM settings WHERE key = :key;

-- name: put_setting
INSERT INTO settings (key, value, updated_at, updated_by) VALUES (:key, :value, :now, :actor)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at,
                                updated_by = excluded.updated_by;

-- name: insert_cluster_event
INSERT INTO cluster_events (at, actor, kind, detail) VALUES (:now, :actor, :kind, :detail);

-- name: list_cluster_events
SELECT * FROM cluster_events WHERE kind = :kind ORDER BY id DESC LIMIT :limit;

-- name: prune_cluster_events
-- Retention: cluster events (mode changes) older than :before, a bounded number at a time.
DELETE FROM cluster_events WHERE id IN (SELECT id FROM cluster_events WHERE at < :before ORDER BY id LIMIT :limit);
