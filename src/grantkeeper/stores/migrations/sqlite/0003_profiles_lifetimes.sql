-- grantkeeper sqlite schema, version 3: provider profiles and private_key_jwt client keys, and the lifetime of each
-- grant's current refresh token. Forward-only: existing rows keep working with the defaults.
ALTER TABLE providers ADD COLUMN private_key_file TEXT;
ALTER TABLE providers ADD COLUMN key_id TEXT;
ALTER TABLE providers ADD COLUMN jwt_audience TEXT;
ALTER TABLE providers ADD COLUMN send_scope INTEGER NOT NULL DEFAULT 0;
ALTER TABLE providers ADD COLUMN profile TEXT;
-- When the current refresh token was issued (import or rotation). NULL for grants from version 1 (then
-- refreshed_at stands in for it).
ALTER TABLE grants ADD COLUMN refresh_issued_at REAL;
-- When the provider said the current refresh token expires (refresh_token_expires_in), if it said so.
ALTER TABLE grants ADD COLUMN refresh_expires_at REAL;
