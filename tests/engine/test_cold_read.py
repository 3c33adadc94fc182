"""The cold read (`access_token` after a cache miss) against a store that answers late (I4).

A token read from the store as valid may stop being served while the read is on its way back (a store outage, a
pool reconnecting): what the read returns is judged again at the time it arrives, never at the time it was asked.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from grantkeeper import AsyncKeeper, Keeper
from grantkeeper.stores import SQLiteStore
from tests.helpers import FAST_POLICY, add_grant, resource_ok

Sim = Callable[..., Any]


class _Clock:
    """The real clocks, `ahead` seconds in the future."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def now(self) -> float:
        return time.time() + self.ahead

    def monotonic(self) -> float:
        return time.monotonic() + self.ahead


def _stored_token(db: Path, sim: Any) -> tuple[str, float]:
    """A grant whose valid access token sits in the store; that token and when it stops being served."""
    with Keeper(SQLiteStore.open(db), policy=FAST_POLICY) as first:
        add_grant(first, sim)
        token = first.access_token("g")
        served = first.served("g")
    assert served is not None
    return token, served.serve_until


def _late_reads(store: SQLiteStore, clock: _Clock, until: float) -> None:
    """Make the store's cold read return only once `until` has passed (by `clock`)."""
    read = store.served_access

    def late(name: str, now: float) -> Any:
        result = read(name, now)
        clock.ahead = until - time.time() + 1.0
        return result

    store.served_access = late  # type: ignore[method-assign]


def test_a_token_that_stops_being_served_while_the_read_returns_is_not_served(tmp_path: Path, make_sim: Sim) -> None:
    sim = make_sim(access_ttl=600)
    stale, until = _stored_token(tmp_path / "s.db", sim)
    clock = _Clock()
    store = SQLiteStore.open(tmp_path / "s.db")
    _late_reads(store, clock, until)
    with Keeper(store, policy=FAST_POLICY, clock=clock) as cold:
        token = cold.access_token("g")
    assert token != stale  # refreshed rather than served past its time
    assert resource_ok(sim, token)


@pytest.mark.anyio
async def test_the_same_on_the_async_keeper(tmp_path: Path, make_sim: Sim) -> None:
    sim = make_sim(access_ttl=600)
    stale, until = _stored_token(tmp_path / "s.db", sim)
    clock = _Clock()
    store = SQLiteStore.open(tmp_path / "s.db")
    _late_reads(store, clock, until)
    cold = AsyncKeeper(store, policy=FAST_POLICY, clock=clock)
    try:
        token = await cold.access_token("g")
    finally:
        await cold.aclose()
    assert token != stale
    assert resource_ok(sim, token)


def _counted_slow_reads(store: SQLiteStore) -> list[str]:
    """Count the store's cold reads, each held 50 ms so that concurrent callers overlap it."""
    read = store.served_access
    calls: list[str] = []

    def slow(name: str, now: float) -> Any:
        calls.append(name)
        time.sleep(0.05)
        return read(name, now)

    store.served_access = slow  # type: ignore[method-assign]
    return calls


def test_concurrent_cold_callers_share_one_store_read(tmp_path: Path, make_sim: Sim) -> None:
    """Eight threads miss the cache for one grant at once: one of them reads the store, the rest find its result
    cached under the grant's lock; nothing is refreshed."""
    sim = make_sim(access_ttl=600)
    stored, _ = _stored_token(tmp_path / "s.db", sim)
    store = SQLiteStore.open(tmp_path / "s.db")
    calls = _counted_slow_reads(store)
    before = sim.stats.refresh_calls
    with Keeper(store, policy=FAST_POLICY) as cold:
        start = threading.Barrier(8)

        def ask() -> str:
            start.wait()
            return cold.access_token("g")

        with ThreadPoolExecutor(8) as pool:
            tokens = list(pool.map(lambda _: ask(), range(8)))
    assert tokens == [stored] * 8
    assert calls == ["g"]
    assert sim.stats.refresh_calls == before


@pytest.mark.anyio
async def test_concurrent_cold_tasks_share_one_store_read(tmp_path: Path, make_sim: Sim) -> None:
    sim = make_sim(access_ttl=600)
    stored, _ = _stored_token(tmp_path / "s.db", sim)
    store = SQLiteStore.open(tmp_path / "s.db")
    calls = _counted_slow_reads(store)
    before = sim.stats.refresh_calls
    cold = AsyncKeeper(store, policy=FAST_POLICY)
    try:
        tokens = await asyncio.gather(*(cold.access_token("g") for _ in range(8)))
    finally:
        await cold.aclose()
    assert tokens == [stored] * 8
    assert calls == ["g"]
    assert sim.stats.refresh_calls == before


def _stored_grants(keeper: Keeper | AsyncKeeper, n: int) -> dict[str, str]:
    """`n` grants whose valid access tokens sit in the store (imported, never refreshed): name -> token."""
    tokens = {f"c{i:03d}": f"tok-{i:03d}-abcdefgh" for i in range(n)}
    for name, token in tokens.items():
        keeper.import_grant(name, provider="sim", refresh_token=f"refresh-{name}-0123456789", access_token=token,
                            expires_at=time.time() + 3600)  # fmt: skip
    return tokens


def test_cold_reads_keep_no_lock_per_grant(tmp_path: Path, make_sim: Sim) -> None:
    """A broker that reads each of a million grants once must not keep a million locks: cold reads queue on a
    fixed set of read locks chosen by name, and only a grant that is refreshed gets a lock of its own."""
    sim = make_sim(access_ttl=600)
    with Keeper(SQLiteStore.open(tmp_path / "s.db"), policy=FAST_POLICY) as keeper:
        add_grant(keeper, sim)
        tokens = _stored_grants(keeper, 300)
        before = sim.stats.refresh_calls
        assert {name: keeper.access_token(name) for name in tokens} == tokens
        assert sim.stats.refresh_calls == before
        assert keeper._locks == {}


@pytest.mark.anyio
async def test_cold_reads_keep_no_lock_per_grant_on_the_async_keeper(tmp_path: Path, make_sim: Sim) -> None:
    sim = make_sim(access_ttl=600)
    with Keeper(SQLiteStore.open(tmp_path / "s.db"), policy=FAST_POLICY) as setup:
        add_grant(setup, sim)
        tokens = _stored_grants(setup, 300)
    before = sim.stats.refresh_calls
    keeper = AsyncKeeper(SQLiteStore.open(tmp_path / "s.db"), policy=FAST_POLICY)
    try:
        assert {name: await keeper.access_token(name) for name in tokens} == tokens
    finally:
        await keeper.aclose()
    assert sim.stats.refresh_calls == before
    assert keeper._locks == {}
