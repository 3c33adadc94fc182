-- grantkeeper sqlite schema, version 10: the operator console of `grantkeeper serve` (/ui/).
-- A console session is kept only as the SHA-256 of its cookie (256 random bits: a plain hash cannot be reversed
-- or guessed), with the API key it signed in with, so sign-out and key revocation end it on every instance that
-- shares the store.
CREATE TABLE IF NOT EXISTS console_sessions (
    id_hash     TEXT PRIMARY KEY,          -- SHA-256 (hex) of the session cookie
    api_key     TEXT NOT NULL,             -- the name of the key it signed in with
    key_id      TEXT NOT NULL,             -- and its public id: a key made again under the same name is another key
    created_at  REAL NOT NULL,
    expires_at  REAL NOT NULL,
    revoked_at  REAL                       -- NULL: signed in
);
CREATE INDEX IF NOT EXISTS console_sessions_by_expiry ON console_sessions (expires_at);
-- The grants list pages through any number of grants by keyset on these (sort column, then name).
CREATE INDEX IF NOT EXISTS grants_by_provider ON grants (provider, name);
CREATE INDEX IF NOT EXISTS grants_by_state ON grants (state, name);
CREATE INDEX IF NOT EXISTS grants_by_expiry ON grants (COALESCE(expires_at, 0), name);
CREATE INDEX IF NOT EXISTS grants_by_generation ON grants (generation, name);
-- The API keys page shows when each key was last used: one index probe per key.
CREATE INDEX IF NOT EXISTS audit_by_key ON audit (api_key, at);
