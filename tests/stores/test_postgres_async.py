"""The native asyncio PostgreSQL store: what it adds to the conformance suite (tests/stores/test_store.py runs
the contract on it): it is what `open_async_store` opens for PostgreSQL, its LISTEN connection wakes waiters and calls
subscribers, and it runs the refresh protocol's async driver end to end. (tests/stores/test_postgres.py runs the
PostgreSQL-specific promises, migrations, keys, reconnects and round trips, on both faces.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from anyio.from_thread import start_blocking_portal

from grantkeeper import ConfigurationError, Provider, Secret
from grantkeeper._clock import SystemClock
from grantkeeper.engine.drivers import drive_async
from grantkeeper.engine.threaded import ThreadedStore
from grantkeeper.model.claims import GrantUpdate
from grantkeeper.protocol.refresh import Refreshed, refresh_flow
from grantkeeper.stores import open_async_store, open_store
from grantkeeper.stores.postgres_async import AsyncPostgresStore
from grantkeeper.testing import Delay
from grantkeeper.tokens.sender import AsyncHttpSender
from tests.conftest import TEST_KEY
from tests.helpers import FAST_POLICY, provider_for

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]
Sim = Callable[..., object]
T0 = 1_800_000_000.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GRANTKEEPER_KEY", TEST_KEY)
    monkeypatch.setenv("GRANTKEEPER_RECOVERY_DIR", f"{tmp_path}/recovery")


@pytest.fixture
def migrated(pg_url: str, keyed: None) -> str:
    open_store(pg_url, migrate=True).close()
    return pg_url


async def _grant(store: AsyncPostgresStore, name: str = "g") -> None:
    provider = Provider(name="p", token_url="https://as.example/token", client_id="c", client_secret=Secret("s"))
    await store.put_provider(provider, now=T0)
    await store.import_grant(name, provider="p", refresh_token=Secret("refresh-token-0000000000001"), scopes=(), now=T0)


async def _refresh_once(store: AsyncPostgresStore, name: str = "g", *, worker: str = "w1") -> int:
    """Claim and commit generation+1 directly (another worker's commit, as far as a listener can tell)."""
    claim = await store.claim(name, worker=worker, lease_ttl=30.0, now=T0, force=True, seen_generation=None)
    assert claim.lease is not None and claim.attempt is not None
    token, access = Secret(f"refresh-token-{worker}-000000002"), Secret("access-token-00000000002")
    update = GrantUpdate(refresh_token=token, access_token=access, expires_at=T0 + 3600, scopes=None)
    committed = await store.commit(claim.lease, attempt_id=claim.attempt.id, base=claim.grant, update=update, now=T0)
    return committed.generation


async def test_open_async_store_is_native_on_postgres_and_threaded_elsewhere(migrated: str, tmp_path: Path) -> None:
    """PostgreSQL gets the asyncio pool (its operations are coroutine functions); SQLite runs in threads."""
    store = await open_async_store(migrated)
    try:
        assert isinstance(store, AsyncPostgresStore)
        assert asyncio.iscoroutinefunction(store.claim) and asyncio.iscoroutinefunction(store.commit)
        assert await store.schema_version() == open_store(migrated).schema_version()
    finally:
        await store.close()
    sqlite = await open_async_store(f"sqlite://{tmp_path}/grants.db")
    try:
        assert isinstance(sqlite, ThreadedStore)
    finally:
        await sqlite.close()


async def test_a_closed_store_refuses_work(migrated: str) -> None:
    store = await AsyncPostgresStore.open(migrated)
    await store.close()
    with pytest.raises(ConfigurationError, match="closed"):
        await store.list_grants()


async def test_subscribers_hear_other_processes_commits(migrated: str) -> None:
    """A commit by another store (another process, as far as the listener can tell) reaches subscribers on the
    loop, with the grant, the new generation and the kind of event."""
    listening = await AsyncPostgresStore.open(migrated)
    writer = await AsyncPostgresStore.open(migrated)
    heard: list[tuple[str, int, str]] = []
    arrived = asyncio.Event()

    def subscriber(name: str, generation: int, kind: str) -> None:
        heard.append((name, generation, kind))
        arrived.set()

    try:
        await _grant(writer)
        listening.subscribe(subscriber)
        await asyncio.wait_for(listening._ensure_listener().connected.wait(), 30)
        assert await _refresh_once(writer) == 2
        await asyncio.wait_for(arrived.wait(), 30)
        assert heard[0] == ("g", 2, "commit")
    finally:
        await listening.close()
        await writer.close()


async def test_waiter_returns_once_the_commit_is_announced(migrated: str) -> None:
    """wait_for_change returns after another store's commit with that generation announced; without a commit it
    returns with nothing announced (it is capped, so a lost notification only costs a poll)."""
    waiting = await AsyncPostgresStore.open(migrated)
    writer = await AsyncPostgresStore.open(migrated)
    try:
        await _grant(writer)
        await waiting.wait_for_change("g", poll=0.01, longest=0.05, generation=1)  # starts the listener
        await asyncio.wait_for(waiting._ensure_listener().connected.wait(), 30)
        await waiting.wait_for_change("g", poll=0.01, longest=0.05, generation=1)
        assert not waiting._announced.moved("g", 1, 0)
        wait = asyncio.create_task(waiting.wait_for_change("g", poll=30, longest=30, generation=1))
        await asyncio.sleep(0)
        assert await _refresh_once(writer) == 2
        await asyncio.wait_for(wait, 30)
        assert waiting._announced.moved("g", 1, 0)
    finally:
        await waiting.close()
        await writer.close()


async def test_async_driver_refreshes_once_for_two_workers(migrated: str, make_sim: Sim) -> None:
    """Two workers on two native stores refresh the same grant through the async driver while the provider is
    slow: one sends, the other waits on its lease (woken by NOTIFY) and returns its token; one provider call."""
    sim = make_sim()
    first = await AsyncPostgresStore.open(migrated)
    second = await AsyncPostgresStore.open(migrated)
    try:
        await first.put_provider(provider_for(sim), now=T0)
        await first.import_grant("g", provider="sim", refresh_token=Secret(sim.issue_grant()), scopes=(),  # type: ignore[attr-defined]
                                 now=SystemClock().now())  # fmt: skip
        sim.inject(Delay(0.5))  # type: ignore[attr-defined]
        async with httpx.AsyncClient() as client:
            sender = AsyncHttpSender(client)

            async def refresh(store: AsyncPostgresStore, worker: str) -> Refreshed:
                flow = refresh_flow("g", worker=worker, force=False, policy=FAST_POLICY)
                return await drive_async(flow, store=store, sender=sender, clock=SystemClock())

            sending = asyncio.create_task(refresh(first, "host-a"))
            while sim.stats.refresh_calls == 0:  # type: ignore[attr-defined]
                await asyncio.sleep(0.01)
            waited = await refresh(second, "host-b")
            sent = await sending
        assert sent.grant.generation == waited.grant.generation == 2
        assert sent.grant.access_token == waited.grant.access_token
        assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]
    finally:
        await first.close()
        await second.close()


def test_a_subscriber_added_outside_the_loop_hears_commits_once_the_store_is_used(migrated: str) -> None:
    """subscribe() from a thread with no running event loop (a blocking caller beside the store's loop) does not
    fail: the listener starts on the store's loop with its next call, and the subscriber hears the next commit."""
    heard: list[tuple[str, int, str]] = []
    with start_blocking_portal() as portal:
        listening = portal.call(AsyncPostgresStore.open, migrated)
        writer = portal.call(AsyncPostgresStore.open, migrated)
        try:
            portal.call(_grant, writer)
            listening.subscribe(lambda *note: heard.append(note))
            assert listening._listener is None
            portal.call(listening.list_grants)
            assert listening._listener is not None
            portal.call(_listening, listening)
            assert portal.call(_refresh_once, writer) == 2
            for _ in range(3000):
                if heard:
                    break
                time.sleep(0.01)
            assert heard == [("g", 2, "commit")]
        finally:
            portal.call(listening.close)
            portal.call(writer.close)


async def _listening(store: AsyncPostgresStore) -> None:
    await asyncio.wait_for(store._ensure_listener().connected.wait(), 30)
