-- grantkeeper postgres schema, version 4: the authorization endpoint (for `grantkeeper connect`) and the RFC 7009
-- revocation endpoint (for `grantkeeper grant revoke`). Forward-only: NULL means not known.
ALTER TABLE providers ADD COLUMN authorization_url TEXT;
ALTER TABLE providers ADD COLUMN revocation_url TEXT;
