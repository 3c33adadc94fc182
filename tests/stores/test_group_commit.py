"""Group commit (`SQLStore.perform_batch`): the claims of many grants in one transaction, their commits in another,
each durable once for all; a call that fails is rolled back alone; on every store kind."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from typing import Any

import pytest

from grantkeeper import Provider, Secret, UnknownGrant
from grantkeeper.model.claims import Claim, GenerationConflict, GrantUpdate
from grantkeeper.stores import open_store
from grantkeeper.stores.sql import SQLStore
from grantkeeper.stores.transactions import Failed

T0 = time.time()
NAMES = [f"g{i}" for i in range(8)]


def _setup(store: SQLStore) -> None:
    provider = Provider(name="p", token_url="https://as.example/token", client_id="c", client_secret=Secret("s"))
    store.put_provider(provider, now=T0)
    for name in NAMES:
        store.import_grant(name, provider="p", refresh_token=Secret(f"refresh-token-{name}-0000000001"), scopes=(),
                           now=T0)  # fmt: skip


def _counting_transactions(store: SQLStore) -> list[int]:
    """Count the write transactions `store` opens from now on: [count]."""
    opened = [0]
    begin, execute = store._writer()

    def counted() -> AbstractContextManager[Any]:
        opened[0] += 1
        return begin()

    store._writer = lambda: (counted, execute)  # type: ignore[method-assign]
    return opened


def _claim_call(name: str, worker: str = "w") -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    return "claim", (name,), {"worker": worker, "lease_ttl": 30.0, "now": T0, "force": True, "seen_generation": None}


def test_claims_and_commits_of_eight_grants_take_one_transaction_each(store_url: str) -> None:
    store = open_store(store_url)
    try:
        _setup(store)
        opened = _counting_transactions(store)
        claims: list[Claim] = store.perform_batch([_claim_call(n) for n in NAMES])
        assert opened == [1]
        assert all(isinstance(c, Claim) and c.lease is not None and c.attempt is not None for c in claims)
        assert [c.lease.grant for c in claims if c.lease] == NAMES  # each grant's own lease, in order
        commits = []
        for c in claims:
            assert c.lease is not None and c.attempt is not None
            token = Secret(f"refresh-token-{c.grant.name}-0000000002")
            update = GrantUpdate(refresh_token=token, access_token=Secret("access-token-0000000002"),
                                 expires_at=T0 + 3600, scopes=None)  # fmt: skip
            commits.append(("commit", (c.lease,), {"attempt_id": c.attempt.id, "base": c.grant, "update": update,
                                                   "now": T0}))  # fmt: skip
        committed = store.perform_batch(commits)
        assert opened == [2]
        assert [g.generation for g in committed] == [2] * len(NAMES)
    finally:
        store.close()
    if store_url.startswith("memory"):
        return
    again = open_store(store_url)  # durable: another connection sees every commit and no lease left
    try:
        assert all(again.get_grant(n).generation == 2 for n in NAMES)
        assert all(again.lease_holder(n, now=T0) is None for n in NAMES)
        assert all(a.state.value == "committed" for n in NAMES for a in again.list_attempts(n))
    finally:
        again.close()


def test_a_call_that_fails_is_rolled_back_alone(store: SQLStore) -> None:
    _setup(store)
    claims = store.perform_batch([_claim_call("g0"), _claim_call("nobody"), _claim_call("g1")])
    assert isinstance(claims[1], Failed) and isinstance(claims[1].error, UnknownGrant)
    first, last = claims[0], claims[2]
    assert isinstance(first, Claim) and isinstance(last, Claim) and first.lease and last.lease
    assert first.attempt is not None and last.attempt is not None
    stale = first.grant
    update = GrantUpdate(refresh_token=Secret("refresh-token-g0-0000000002"), access_token=None, expires_at=None,
                         scopes=None)  # fmt: skip
    store.import_grant("g0", provider="p", refresh_token=Secret("refresh-token-g0-reimported"), scopes=(), now=T0)
    results = store.perform_batch([
        ("commit", (first.lease,), {"attempt_id": first.attempt.id, "base": stale, "update": update, "now": T0}),
        ("commit", (last.lease,), {"attempt_id": last.attempt.id, "base": last.grant, "update": update, "now": T0}),
    ])  # fmt: skip
    assert isinstance(results[0], Failed) and isinstance(results[0].error, GenerationConflict)
    assert results[1].generation == 2
    assert store.get_grant("g0").refresh_fp == store.fingerprint(Secret("refresh-token-g0-reimported"))
    assert store.get_grant("g1").generation == 2


def test_only_transactions_that_write_join_a_batch(store: SQLStore) -> None:
    _setup(store)
    with pytest.raises(TypeError, match="cannot join a batch"):
        store.perform_batch([("get_grant", ("g0",), {})])
