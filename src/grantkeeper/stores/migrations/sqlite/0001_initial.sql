-- grantkeeper SQLite schema, version 1. Tokens and client secrets are AES-256-GCM ciphertext (BLOB);
-- *_fp columns hold keyed fingerprints, never tokens.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

CREATE TABLE providers (
    name               TEXT PRIMARY KEY,
    token_url          TEXT NOT NULL,
    client_id          TEXT NOT NULL,
    client_secret      BLOB,
    client_secret_env  TEXT,
    auth_method        TEXT NOT NULL,
    rotation           TEXT NOT NULL,
    reuse_grace        REAL NOT NULL,
    skew               REAL NOT NULL,
    default_expires_in REAL NOT NULL,
    refresh_idle_ttl     REAL,
    refresh_absolute_ttl REAL,
    created_at         REAL NOT NULL,
    updated_at         REAL NOT NULL
);

CREATE TABLE grants (
    name            TEXT PRIMARY KEY,
    provider        TEXT NOT NULL REFERENCES providers(name),
    refresh_token   BLOB,
    refresh_fp      TEXT,
    access_token    BLOB,
    access_fp       TEXT,
    expires_at      REAL,
    access_verified INTEGER NOT NULL DEFAULT 1,
    scopes          TEXT NOT NULL DEFAULT '',
    generation      INTEGER NOT NULL,
    state           TEXT NOT NULL,
    last_error      TEXT,
    last_error_at   REAL,
    refreshed_at    REAL NOT NULL,  -- last time the current refresh token was obtained or used (idle expiry)
    created_at      REAL NOT NULL,  -- when this consent was imported (absolute expiry)
    updated_at      REAL NOT NULL
);

-- Finding grants due for refresh is an index range scan, not a table scan.
CREATE INDEX grants_due ON grants (state, expires_at);

CREATE TABLE leases (
    grant_name TEXT PRIMARY KEY REFERENCES grants(name) ON DELETE CASCADE,
    worker     TEXT,
    fence      INTEGER NOT NULL,
    expires_at REAL NOT NULL
);

CREATE TABLE attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    grant_name  TEXT NOT NULL REFERENCES grants(name) ON DELETE CASCADE,
    generation  INTEGER NOT NULL,
    refresh_fp  TEXT NOT NULL,
    worker      TEXT NOT NULL,
    fence       INTEGER NOT NULL,
    started_at  REAL NOT NULL,
    state       TEXT NOT NULL,
    outcome     TEXT,
    resend_of   INTEGER,
    finished_at REAL
);

CREATE INDEX attempts_by_grant ON attempts (grant_name, generation, id);
