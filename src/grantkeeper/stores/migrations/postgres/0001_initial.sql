-- grantkeeper PostgreSQL schema, version 1: the SQLite store's tables and columns. Tokens and client
-- secrets are AES-256-GCM ciphertext (BYTEA); *_fp columns hold keyed fingerprints, never tokens.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);

CREATE TABLE providers (
    name               TEXT PRIMARY KEY,
    token_url          TEXT NOT NULL,
    client_id          TEXT NOT NULL,
    client_secret      BYTEA,
    client_secret_env  TEXT,
    auth_method        TEXT NOT NULL,
    rotation           TEXT NOT NULL,
    reuse_grace        DOUBLE PRECISION NOT NULL,
    skew               DOUBLE PRECISION NOT NULL,
    default_expires_in DOUBLE PRECISION NOT NULL,
    refresh_idle_ttl     DOUBLE PRECISION,
    refresh_absolute_ttl DOUBLE PRECISION,
    created_at         DOUBLE PRECISION NOT NULL,
    updated_at         DOUBLE PRECISION NOT NULL
);

CREATE TABLE grants (
    name            TEXT PRIMARY KEY,
    provider        TEXT NOT NULL REFERENCES providers(name),
    refresh_token   BYTEA,
    refresh_fp      TEXT,
    access_token    BYTEA,
    access_fp       TEXT,
    expires_at      DOUBLE PRECISION,
    access_verified INTEGER NOT NULL DEFAULT 1,
    scopes          TEXT NOT NULL DEFAULT '',
    generation      BIGINT NOT NULL,
    state           TEXT NOT NULL,
    last_error      TEXT,
    last_error_at   DOUBLE PRECISION,
    refreshed_at    DOUBLE PRECISION NOT NULL,  -- last time the current refresh token was obtained or used (idle expiry)
    created_at      DOUBLE PRECISION NOT NULL,  -- when this consent was imported (absolute expiry)
    updated_at      DOUBLE PRECISION NOT NULL
);

-- Finding grants due for refresh is an index range scan, not a table scan.
CREATE INDEX grants_due ON grants (state, expires_at);

CREATE TABLE leases (
    grant_name TEXT PRIMARY KEY REFERENCES grants(name) ON DELETE CASCADE,
    worker     TEXT,
    fence      BIGINT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE attempts (
    id          BIGSERIAL PRIMARY KEY,
    grant_name  TEXT NOT NULL REFERENCES grants(name) ON DELETE CASCADE,
    generation  BIGINT NOT NULL,
    refresh_fp  TEXT NOT NULL,
    worker      TEXT NOT NULL,
    fence       BIGINT NOT NULL,
    started_at  DOUBLE PRECISION NOT NULL,
    state       TEXT NOT NULL,
    outcome     TEXT,
    resend_of   BIGINT,
    finished_at DOUBLE PRECISION
);

CREATE INDEX attempts_by_grant ON attempts (grant_name, generation, id);
