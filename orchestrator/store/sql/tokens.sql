-- name: create_token
-- Returns nothing when a token of that name exists (even revoked: names are
-- actors in the history and are never reused).
INSERT INTO api_tokens (name, role, token_hash, created_by, expires_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (name) DO NOTHING
RETURNING name, role, created_at, created_by, expires_at, revoked_at;

-- name: token_by_hash
SELECT name, role, expires_at, revoked_at FROM api_tokens WHERE token_hash = $1;

-- name: list_tokens
SELECT name, role, created_at, created_by, expires_at, revoked_at
FROM api_tokens ORDER BY name;

-- name: revoke_token
UPDATE api_tokens SET revoked_at = now()
WHERE name = $1 AND revoked_at IS NULL
RETURNING name;
