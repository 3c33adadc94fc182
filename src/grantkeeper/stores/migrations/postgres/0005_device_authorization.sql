-- grantkeeper postgres schema, version 5: the RFC 8628 device authorization endpoint (for `grantkeeper connect
-- --device`). Forward-only: NULL means not known.
ALTER TABLE providers ADD COLUMN device_authorization_url TEXT;
