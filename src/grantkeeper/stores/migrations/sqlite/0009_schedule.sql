-- grantkeeper sqlite schema, version 9: what the refresh scheduler (grantkeeper.engine.scheduler) keeps per grant.
-- hot: kept fresh ahead of time whatever its use (`grantkeeper grant set NAME --hot`), last_used_at: when the
-- service last handed out its token (a grant used within the scheduler's window is hot too), next_due_at: when
-- the scheduler next looks at it (0: plan it at once, new and re-connected grants start there), warned_at: when
-- the scheduler last warned that its refresh token reaches an absolute end.
ALTER TABLE grants ADD COLUMN hot INTEGER NOT NULL DEFAULT 0;
ALTER TABLE grants ADD COLUMN last_used_at REAL;
ALTER TABLE grants ADD COLUMN next_due_at REAL NOT NULL DEFAULT 0;
ALTER TABLE grants ADD COLUMN warned_at REAL;
-- The due query (active grants whose time has come, soonest first) is an index range scan at any size.
CREATE INDEX IF NOT EXISTS grants_next_due ON grants (next_due_at) WHERE state = 'active';
