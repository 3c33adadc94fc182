-- grantkeeper sqlite schema, version 8: the key of the liveness signal the lease holder holds (a file lock or a
-- session advisory lock, see grantkeeper.stores.liveness), so a dead holder's lease is taken over at once.
-- Forward-only: NULL means the holder offers no signal and its lease is waited out.
ALTER TABLE leases ADD COLUMN liveness TEXT;
