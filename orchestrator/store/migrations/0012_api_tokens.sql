-- API tokens: a name and a role; the token itself is never stored, only its
-- SHA-256 (a token carries 256 random bits, so a fast hash is enough).
CREATE TABLE api_tokens (
    name        text PRIMARY KEY,
    role        text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text NOT NULL,
    expires_at  timestamptz,
    revoked_at  timestamptz
);
