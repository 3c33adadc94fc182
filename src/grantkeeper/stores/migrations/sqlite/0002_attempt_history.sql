-- grantkeeper sqlite schema, version 2: attempt history that explains every failure (doctor, history).
-- Fingerprints only, never tokens, and error_description is provider text with token-like runs cut out.
ALTER TABLE attempts ADD COLUMN actor TEXT NOT NULL DEFAULT '';          -- thread or asyncio task
ALTER TABLE attempts ADD COLUMN try_number INTEGER NOT NULL DEFAULT 1;        -- 1 for the claim's first send
ALTER TABLE attempts ADD COLUMN new_generation INTEGER;                       -- set when the attempt committed
ALTER TABLE attempts ADD COLUMN received_fp TEXT;                        -- refresh token the provider returned
ALTER TABLE attempts ADD COLUMN rotated INTEGER;                              -- 1 rotated, 0 kept, NULL unknown
ALTER TABLE attempts ADD COLUMN outcome_class TEXT;                      -- committed, lost_in_flight, ...
ALTER TABLE attempts ADD COLUMN error_code TEXT;                         -- the provider's OAuth error code
ALTER TABLE attempts ADD COLUMN error_description TEXT;
ALTER TABLE attempts ADD COLUMN http_status INTEGER;
ALTER TABLE attempts ADD COLUMN latency REAL;                              -- seconds from send to answer
ALTER TABLE attempts ADD COLUMN evidence TEXT;                           -- JSON: the classified error's facts
-- History retention deletes by age.
CREATE INDEX attempts_by_time ON attempts (started_at);
