-- grantkeeper postgres schema, version 7: `grantkeeper serve`'s API keys and audit trail.
-- An API key is kept only as a keyed hash (HMAC-SHA256 under a subkey of the store's fingerprint key), found by
-- its public id (the secret part is never stored). The audit trail holds names, fingerprints and statuses only.
CREATE TABLE IF NOT EXISTS api_keys (
    name        TEXT PRIMARY KEY,
    key_id      TEXT NOT NULL UNIQUE,      -- the public part of the key (gk_<key_id>_<secret>)
    key_hash    TEXT NOT NULL,             -- keyed hash of the whole key, compared in constant time
    grants      TEXT NOT NULL,             -- comma-separated grant-name patterns (* matches any run)
    scopes      TEXT NOT NULL,             -- comma-separated scopes
    created_at  DOUBLE PRECISION NOT NULL,
    expires_at  DOUBLE PRECISION,                        -- NULL: never
    revoked_at  DOUBLE PRECISION                         -- NULL: in force
);

CREATE TABLE IF NOT EXISTS audit (
    id          BIGSERIAL PRIMARY KEY,
    at          DOUBLE PRECISION NOT NULL,
    api_key     TEXT NOT NULL,             -- the key's name, or "unix-socket" for the local listener
    action      TEXT NOT NULL,             -- token, refresh, rejected, proxy, ...
    grant_name  TEXT,
    status      INTEGER NOT NULL,          -- the HTTP status answered
    fingerprint TEXT,                      -- the access token served, as a fingerprint
    generation  BIGINT,
    detail      TEXT                       -- an error code, or what was proxied (method and host)
);
-- Retention deletes by age and keeps the newest rows per grant.
CREATE INDEX IF NOT EXISTS audit_by_time ON audit (at);
CREATE INDEX IF NOT EXISTS audit_by_grant ON audit (grant_name, id);
