-- name: insert_token
INSERT INTO tokens (user, secret_hash, description, created_by, created_at, expires_at)
VALUES (:user, :secret_hash, :description, :created_by, :now, :expires_at)
RETURNING id, user, description, created_by, created_at, expires_at, revoked_at, last_used_at;

-- name: find_token
-- A token authenticates only while it is neither revoked nor expired.
SELECT id, user, expires_at, last_used_at FROM tokens
WHERE secret_hash = :secret_hash AND revoked_at IS NULL AND expires_at > :now;

-- name: touch_token
UPDATE tokens SET last_used_at = :now WHERE id = :id AND (last_used_at IS NULL OR last_used_at < :stale);

-- name: list_tokens
SELECT id, user, description, created_by, created_at, expires_at, revoked_at, last_used_at FROM tokens
WHERE (:user IS NULL OR user = :user)
ORDER BY id;

-- name: get_token
SELECT id, user, description, created_by, created_at, expires_at, revoked_at, last_used_at FROM tokens WHERE id = :id;

-- name: revoke_token
UPDATE tokens SET revoked_at = :now WHERE id = :id AND revoked_at IS NULL;
