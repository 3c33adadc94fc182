"""The store side of the broker on every store kind: API keys as keyed hashes, the audit trail and its retention."""

from __future__ import annotations

import time

import pytest

from grantkeeper._exceptions import ConfigurationError
from grantkeeper.serve.apikeys import authenticate, new_key
from grantkeeper.stores import SQLStore
from grantkeeper.stores.access import AuditEntry
from grantkeeper.stores.sql import HistoryRetention


def test_api_keys_are_found_by_id_and_checked_by_keyed_hash(store: SQLStore) -> None:
    made = new_key("deploy", grants="acme-*,billing", scopes="token,read", now=1000.0, lifetime=60.0)
    store.create_api_key(made.record, key=made.key)
    found = authenticate(store, made.key)
    assert found == made.record and found.allows_grant("acme-eu") and not found.allows_grant("other")
    secret = made.key.split("_", 2)[2]
    assert authenticate(store, made.key[:-1] + ("A" if made.key[-1] != "A" else "B")) is None
    assert authenticate(store, "gk_" + made.record.key_id + "_" + "x" * 43) is None
    assert authenticate(store, secret) is None
    stored = store.find_api_key(made.record.key_id)
    assert stored is not None and secret not in stored[1] and stored[1] == store.api_key_digest(made.key)
    assert not made.record.usable(1061.0) and made.record.usable(1059.0)
    with pytest.raises(ConfigurationError, match="exists; revoke it first"):
        store.create_api_key(new_key("deploy", grants="x", now=1.0).record, key=made.key)
    revoked = store.revoke_api_key("deploy", now=2000.0)
    assert revoked.revoked_at == 2000.0 and authenticate(store, made.key) == revoked
    again = new_key("deploy", grants="x", now=3000.0)  # a revoked name may be reused, by a new key
    store.create_api_key(again.record, key=again.key)
    assert authenticate(store, made.key) is None and authenticate(store, again.key) == again.record
    assert [r.name for r in store.list_api_keys()] == ["deploy"]
    with pytest.raises(ConfigurationError, match="no API key named"):
        store.revoke_api_key("nobody", now=1.0)


def test_the_audit_trail_keeps_what_history_retention_keeps(store: SQLStore) -> None:
    store.retention = HistoryRetention(days=1.0, per_grant=3)
    now = time.time()
    old = [AuditEntry(now - 2 * 86400, "k", "token", "other", 200, "fp_old", 1)]
    store.record_audit(old)
    store.record_audit([AuditEntry(now + i, "k", "token", "g", 200, f"fp_{i}", i) for i in range(5)])
    kept = store.list_audit(grant="g")
    assert [e.fingerprint for e in kept] == ["fp_4", "fp_3", "fp_2"]  # newest per_grant, newest first
    assert store.list_audit(grant="other") == []  # older than the days
    assert [e.grant for e in store.list_audit()] == ["g", "g", "g"]


def test_a_large_audit_batch_is_written_whole_in_order(store: SQLStore) -> None:
    """More entries than one INSERT carries (chunks of 250): every one is kept, with its own values."""
    store.retention = HistoryRetention(days=1.0, per_grant=1000)
    now = time.time()
    entries = [AuditEntry(now + i / 1000, f"k{i % 3}", "token", "g", 200 + i % 2, f"fp_{i}", i, None if i % 5 else "x")
               for i in range(600)]  # fmt: skip
    store.record_audit(entries)
    kept = store.list_audit(grant="g", limit=1000)
    assert [(e.api_key, e.status, e.fingerprint, e.generation, e.detail) for e in reversed(kept)] == [
        (e.api_key, e.status, e.fingerprint, e.generation, e.detail) for e in entries
    ]
