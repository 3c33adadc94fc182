-- grantkeeper postgres schema, version 11: `grantkeeper serve`'s hosted connect sessions.
-- One row per one-time connect URL. The URL's secret, the `state` sent to the provider and the browser cookie are
-- kept only as keyed hashes, and the PKCE code verifier is AES-256-GCM ciphertext under the store's key.
CREATE TABLE IF NOT EXISTS connect_sessions (
    id            TEXT PRIMARY KEY,          -- the public part of the URL's token (also in events and logs)
    token_hash    TEXT NOT NULL,             -- keyed hash of the whole token in the URL
    grant_name    TEXT NOT NULL,
    provider      TEXT NOT NULL,
    scopes        TEXT NOT NULL,             -- space-separated, as the consent asks for them
    replace_grant INTEGER NOT NULL,          -- 1: an existing grant of that name is replaced
    api_key       TEXT NOT NULL,             -- the name of the key that made the session
    created_at    DOUBLE PRECISION NOT NULL,
    expires_at    DOUBLE PRECISION NOT NULL,             -- the URL must be opened before this
    opened_at     DOUBLE PRECISION,                      -- NULL: not opened yet (opened once only)
    callback_by   DOUBLE PRECISION,                      -- the provider's redirect must come back before this
    state_hash    TEXT,                      -- keyed hash of the state sent to the provider
    browser_hash  TEXT,                      -- keyed hash of the cookie set in the browser that opened the URL
    verifier      BYTEA,                      -- the PKCE code verifier, sealed
    redirect_uri  TEXT,
    finished_at   DOUBLE PRECISION,                      -- NULL: no callback taken yet (taken once only)
    outcome       TEXT                       -- "connected", or the error code that ended it
);
CREATE INDEX IF NOT EXISTS connect_sessions_by_expiry ON connect_sessions (expires_at);
