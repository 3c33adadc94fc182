"""Group commit (`SQLStore.perform_batch`): the claims of many grants in one transaction, their commits in another,
each durable once for all; a call that fails is rolled back alone; on every store kind."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from grantkeeper import Provider, Secret, UnknownGrant
from grantkeeper.model.claims import Claim, GenerationConflict, GrantUpdate
from grantkeeper.stores import open_store
from grantkeeper.stores.sql import SQLStore
from grantkeeper.stores.sqlite import INLINE_BATCH_MOST, SQLiteStore
from grantkeeper.stores.transactions import Failed, Sql, transaction

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


def _recording_statements(store: SQLStore) -> list[str]:
    """Record the text of every statement `store`'s write transactions run from now on."""
    seen: list[str] = []
    begin, execute = store._writer()

    def recorded(conn: Any, step: Any) -> Any:
        seen.append(step.text)
        return execute(conn, step)

    store._writer = lambda: (begin, recorded)  # type: ignore[method-assign]
    return seen


def test_a_batch_where_no_call_fails_runs_without_savepoints(store: SQLStore) -> None:
    _setup(store)
    seen = _recording_statements(store)
    claims = store.perform_batch([_claim_call(n) for n in NAMES])
    assert all(isinstance(c, Claim) and c.lease is not None for c in claims)
    assert seen and not [text for text in seen if "SAVEPOINT" in text]


def test_a_failed_compare_and_set_fails_alone_and_the_others_commit_what_they_returned(store: SQLStore) -> None:
    """The batch runs first without savepoints; a commit whose compare-and-set fails sends it round again, each call
    isolated: one transaction is rolled back whole, the next commits every call but the failed one, and what each
    call returned is what the store holds (not what the rolled-back round computed)."""
    _setup(store)
    claims = store.perform_batch([_claim_call(n) for n in NAMES])
    stale = 3  # its grant is re-imported under it: its commit's generation check fails
    store.import_grant(NAMES[stale], provider="p", refresh_token=Secret("refresh-token-reimported-0000000001"),
                       scopes=(), now=T0)  # fmt: skip
    opened = _counting_transactions(store)
    seen = _recording_statements(store)
    commits = []
    for c in claims:
        assert c.lease is not None and c.attempt is not None
        update = GrantUpdate(refresh_token=Secret(f"refresh-token-{c.grant.name}-0000000002"), access_token=None,
                             expires_at=None, scopes=None)  # fmt: skip
        commits.append(("commit", (c.lease,), {"attempt_id": c.attempt.id, "base": c.grant, "update": update,
                                               "now": T0}))  # fmt: skip
    results = store.perform_batch(commits)
    assert opened == [2]  # the round without savepoints (rolled back), then the isolated one
    assert any("SAVEPOINT" in text for text in seen)
    assert isinstance(results[stale], Failed) and isinstance(results[stale].error, GenerationConflict)
    for i, (name, result) in enumerate(zip(NAMES, results, strict=True)):
        stored = store.get_grant(name)
        if i == stale:
            assert stored.refresh_fp == store.fingerprint(Secret("refresh-token-reimported-0000000001"))
            continue
        assert result.generation == stored.generation == 2
        assert stored.refresh_fp == result.refresh_fp == store.fingerprint(Secret(f"refresh-token-{name}-0000000002"))
        assert store.lease_holder(name, now=T0) is None
        assert [a.state.value for a in store.list_attempts(name)] == ["committed"]


def test_claims_after_a_failed_one_hold_the_leases_and_attempts_they_returned(store: SQLStore) -> None:
    _setup(store)
    calls = [_claim_call(n) for n in NAMES[:3]] + [_claim_call("nobody")] + [_claim_call(n) for n in NAMES[3:]]
    claims = store.perform_batch(calls)
    assert isinstance(claims[3], Failed) and isinstance(claims[3].error, UnknownGrant)
    for claim in claims[:3] + claims[4:]:
        assert isinstance(claim, Claim) and claim.lease is not None and claim.attempt is not None
        holder = store.lease_holder(claim.grant.name, now=T0)
        assert holder is not None and holder.fence == claim.lease.fence
        assert store.get_attempt(claim.grant.name, claim.attempt.id) is not None
        assert [a.id for a in store.list_attempts(claim.grant.name)] == [claim.attempt.id]


def _threads_of(store: SQLStore) -> tuple[list[int], list[int]]:
    """Record the thread of every write transaction's begin and of every statement `store` runs from now on."""
    begun: list[int] = []
    ran: list[int] = []
    begin, execute = store._writer()

    def begin_here() -> AbstractContextManager[Any]:
        transaction = begin()

        class Recorded:
            def __enter__(self) -> Any:
                begun.append(threading.get_ident())
                return transaction.__enter__()

            def __exit__(self, *exc_info: Any) -> Any:
                return transaction.__exit__(*exc_info)

        return Recorded()

    def execute_here(conn: Any, step: Any) -> Any:
        ran.append(threading.get_ident())
        return execute(conn, step)

    store._writer = lambda: (begin_here, execute_here)  # type: ignore[method-assign]
    return begun, ran


@pytest.fixture(params=["memory", "sqlite"])
def sqlite_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore.open(None if request.param == "memory" else tmp_path / "grants.db")
    yield store
    store.close()


def test_an_async_batch_runs_its_statements_on_the_loop_and_waits_for_its_transaction_in_a_thread(
    sqlite_store: SQLiteStore,
) -> None:
    _setup(sqlite_store)
    begun, ran = _threads_of(sqlite_store)
    opened = _counting_transactions(sqlite_store)

    async def batch() -> tuple[int, list[Any]]:
        return threading.get_ident(), await sqlite_store.perform_batch_async([_claim_call(n) for n in NAMES])

    loop_thread, claims = asyncio.run(batch())
    assert opened == [1]
    assert all(isinstance(c, Claim) and c.lease is not None for c in claims)
    assert ran and set(ran) == {loop_thread}
    assert begun and loop_thread not in begun
    assert all(sqlite_store.lease_holder(n, now=T0) is not None for n in NAMES)


def test_a_large_async_batch_runs_whole_in_the_batch_thread(sqlite_store: SQLiteStore) -> None:
    names = [f"many{i}" for i in range(INLINE_BATCH_MOST + 1)]
    _setup(sqlite_store)
    for name in names:
        sqlite_store.import_grant(name, provider="p", refresh_token=Secret(f"refresh-token-{name}-0000000001"),
                                  scopes=(), now=T0)  # fmt: skip
    _, ran = _threads_of(sqlite_store)

    async def batch() -> tuple[int, list[Any]]:
        return threading.get_ident(), await sqlite_store.perform_batch_async([_claim_call(n) for n in names])

    loop_thread, claims = asyncio.run(batch())
    assert all(isinstance(c, Claim) and c.lease is not None for c in claims)
    assert ran and loop_thread not in ran


def test_async_batches_at_once_take_turns_and_a_failed_call_fails_alone(sqlite_store: SQLiteStore) -> None:
    _setup(sqlite_store)

    async def batches() -> list[list[Any]]:
        return await asyncio.gather(
            sqlite_store.perform_batch_async([_claim_call(n) for n in NAMES[:4]]),
            sqlite_store.perform_batch_async([_claim_call("nobody")] + [_claim_call(n) for n in NAMES[4:]]),
        )

    first, second = asyncio.run(batches())
    assert isinstance(second[0], Failed) and isinstance(second[0].error, UnknownGrant)
    for claim in first + second[1:]:
        assert isinstance(claim, Claim) and claim.lease is not None
        holder = sqlite_store.lease_holder(claim.grant.name, now=T0)
        assert holder is not None and holder.fence == claim.lease.fence


def _waited_for(store: SQLStore) -> list[str]:
    """Record the text of every statement of `store`'s write transactions that is waited for (a round trip where
    the runner pipelines)."""
    seen: list[str] = []
    begin, execute = store._writer()

    def recorded(conn: Any, step: Any) -> Any:
        if step.wait:
            seen.append(step.text)
        return execute(conn, step)

    store._writer = lambda: (begin, recorded)  # type: ignore[method-assign]
    return seen


def test_postgres_batch_sends_the_calls_side_by_side(postgres_store_url: str) -> None:
    """Eight claims and then their eight commits each wait for about as many statements as one call has, not
    eight times that (each statement waited for is a round trip; the recorder sees what the batch sends)."""
    store = open_store(postgres_store_url)
    try:
        _setup(store)
        waited = _waited_for(store)
        claims = store.perform_batch([_claim_call(n) for n in NAMES])
        assert all(isinstance(c, Claim) and c.lease is not None and c.attempt is not None for c in claims)
        claim_round_trips = len(waited)
        commits = []
        for c in claims:
            update = GrantUpdate(refresh_token=Secret(f"refresh-token-{c.grant.name}-0000000002"), access_token=None,
                                 expires_at=None, scopes=None)  # fmt: skip
            commits.append(("commit", (c.lease,), {"attempt_id": c.attempt.id, "base": c.grant, "update": update,
                                                   "now": T0}))  # fmt: skip
        committed = store.perform_batch(commits)
        assert [g.generation for g in committed] == [2] * len(NAMES)
        # A claim reads its grant, its lease and earlier attempts and inserts its attempt; a commit checks its
        # compare-and-set; then each batch waits once more before its commit (the statements not waited for).
        assert claim_round_trips <= 5 and len(waited) - claim_round_trips <= 2
        assert all(store.lease_holder(n, now=T0) is None for n in NAMES)
    finally:
        store.close()


def test_postgres_batch_reads_every_result_it_needs_and_runs_the_unread_statements_on_one_cursor(
    postgres_store_url: str,
) -> None:
    """Side by side, a statement whose result its claim reads may be sent without waiting (another statement of
    its round is waited for): it still gets a cursor of its own, and the claim reads its own result from it. The
    statements nobody reads (lease writes, attempt updates, releases, NOTIFY) share one cursor per transaction."""
    store = open_store(postgres_store_url)
    try:
        _setup(store)
        begin, execute = store._writer()
        sent: list[tuple[bool, bool, Any]] = []  # (read, wait, cursor) per statement; held, so no id is reused

        def recorded(conn: Any, step: Any) -> Any:
            cursor = execute(conn, step)
            sent.append((step.read, step.wait, cursor))
            return cursor

        store._writer = lambda: (begin, recorded)  # type: ignore[method-assign]
        claims = store.perform_batch([_claim_call(n) for n in NAMES])
        assert [c.lease.grant for c in claims if c.lease] == NAMES
        assert len({c.attempt.id for c in claims if c.attempt}) == len(NAMES)  # each its own INSERT ... RETURNING
        read = [id(cursor) for was_read, _, cursor in sent if was_read]
        assert any(was_read and not wait for was_read, wait, _ in sent)  # read later, not waited for at once
        assert len(set(read)) == len(read)
        unread = {id(cursor) for was_read, _, cursor in sent if not was_read}
        assert len(unread) == 1 and not unread & set(read)
    finally:
        store.close()


def test_calls_on_one_grant_in_a_batch_keep_their_order(store: SQLStore) -> None:
    """Side by side or not, the second claim of a grant in one batch sees the lease the first one took."""
    _setup(store)
    first, second, other = store.perform_batch([_claim_call("g0", "w1"), _claim_call("g0", "w2"), _claim_call("g1")])
    assert isinstance(first, Claim) and first.lease is not None and first.lease.worker == "w1"
    assert isinstance(second, Claim) and second.lease is None and second.holder is not None
    assert second.holder.worker == "w1"
    assert isinstance(other, Claim) and other.lease is not None
    holder = store.lease_holder("g0", now=T0)
    assert holder is not None and holder.worker == "w1"


def test_an_async_batch_cancelled_while_its_transaction_begins_still_ends_it(tmp_path: Path) -> None:
    """The caller of `perform_batch_async` is cancelled while the batch thread takes the write lock: the batch still
    runs to its end (as a batch run whole in a thread would) and the caller sees the cancellation; the write lock
    is not left held by a transaction nobody ends (every other writer would then fail)."""
    store = SQLiteStore.open(tmp_path / "grants.db", busy_timeout=1.0)
    try:
        _setup(store)
        begin, execute = store._writer()
        beginning, begun = threading.Event(), threading.Event()

        def slow_begin() -> AbstractContextManager[Any]:
            transaction = begin()

            class Slow:
                def __enter__(self) -> Any:
                    beginning.set()
                    time.sleep(0.3)
                    conn = transaction.__enter__()
                    begun.set()
                    return conn

                def __exit__(self, *exc_info: Any) -> Any:
                    return transaction.__exit__(*exc_info)

            return Slow()

        store._writer = lambda: (slow_begin, execute)  # type: ignore[method-assign]

        async def cancelled() -> None:
            batch = asyncio.ensure_future(store.perform_batch_async([_claim_call(n) for n in NAMES[:2]]))
            while not beginning.is_set():
                await asyncio.sleep(0.01)
            batch.cancel()
            with pytest.raises(asyncio.CancelledError):
                await batch

        asyncio.run(cancelled())
        assert begun.wait(5)
        other = SQLiteStore.open(tmp_path / "grants.db", busy_timeout=1.0)  # another process's connection
        try:
            other.set_hot("g7", True)  # a write: refused if the lock were still held
            assert all(other.lease_holder(n, now=T0) is not None for n in NAMES[:2])  # the batch ran to its end
        finally:
            other.close()
    finally:
        store.close()


def test_a_call_whose_statement_fails_in_the_database_fails_alone(
    store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A statement the database refuses (here: a table that does not exist) fails its call alone: on PostgreSQL the
    error surfaces at the statement waited for with the calls side by side, whose call is not known; the batch then
    runs again, each call isolated."""

    def broken(self: SQLStore, name: str) -> Any:
        yield Sql("UPDATE no_such_table SET x = 1 WHERE name = ?", (name,))

    monkeypatch.setattr(type(store), "broken", transaction(broken), raising=False)
    _setup(store)
    results = store.perform_batch([_claim_call("g0"), ("broken", ("g1",), {}), _claim_call("g2")])
    assert isinstance(results[1], Failed)
    for claim in (results[0], results[2]):
        assert isinstance(claim, Claim) and claim.lease is not None
        holder = store.lease_holder(claim.grant.name, now=T0)
        assert holder is not None and holder.fence == claim.lease.fence
