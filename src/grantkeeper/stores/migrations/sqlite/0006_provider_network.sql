-- grantkeeper sqlite schema, version 6: per-provider network and consent settings (no semicolons in these
-- comments: the runner splits statements on them). authorize_params is a JSON list of [name, value] pairs
-- added to connect requests. api_base_url is where the proxy of the service forwards. ca_bundle and proxy
-- shape TLS and the route to the endpoints of the provider. insecure_http allows plain http to hosts other
-- than loopback. Forward-only: NULL (or 0) means not set.
ALTER TABLE providers ADD COLUMN authorize_params TEXT;
ALTER TABLE providers ADD COLUMN api_base_url TEXT;
ALTER TABLE providers ADD COLUMN ca_bundle TEXT;
ALTER TABLE providers ADD COLUMN proxy TEXT;
ALTER TABLE providers ADD COLUMN insecure_http INTEGER NOT NULL DEFAULT 0;
