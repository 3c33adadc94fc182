"""Cancelling asyncio tasks mid-refresh on the native async PostgreSQL store (`AsyncPostgresStore`).

A task that calls ``await keeper.access_token(...)`` may be cancelled at any await: ``task.cancel()``, or an
``asyncio.timeout`` around the call. Wherever that lands, the pool gets its connection back with no transaction left
open (or replaces it), no lease is left behind, and the next call on the same keeper gets a token the provider
accepts. Cancellation is not a crash, and leaves less to clean up than one: a claim runs to its answer, and an
attempt whose request never started is closed as not sent (a crash leaves it open, possibly spent, and on
PostgreSQL another host then defers its refresh for `adopt_after`); once the refresh token is on its way to the
provider the refresh runs on until the successor is committed, and only then is the caller's task cancelled, so even
a strictly rotating provider (no reuse grace) never sees the grant lost.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import psycopg
import pytest
from psycopg import pq

from grantkeeper import AsyncKeeper, AttemptState, GrantkeeperError, GrantState, Keeper, RefreshPolicy
from grantkeeper.stores.postgres_async import AsyncPostgresStore
from tests.helpers import add_grant, provider_for, resource_ok
from tests.stores.test_postgres_async import T0, _grant, _refresh_once

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]
Sim = Callable[..., Any]
POLICY = RefreshPolicy(lease_ttl=11.0, request_timeout=5.0, wait_timeout=30.0, deadline=10.0)
#: How many suspensions a call has varies with timing (a statement may wait once or twice), so an interruption at the
#: n-th one lands on different awaits from one sweep to the next: sweep until each state has been seen.
SWEEPS = 10
MIN_STORE_SWEEPS = 5
#: What a cancelled refresh leaves: nothing done, its attempt closed as not sent, or the successor committed.
CANCELLED_STATES = {"untouched", "not_sent", "committed"}
#: What a store transaction cut off leaves (each whole or absent): nothing, a claim (lease and open attempt), a commit.
CRASH_STATES = {"untouched", "claimed", "committed"}
SETTLE = 30.0  # seconds to wait for the pool to take its connections back (a deadline, not a timing assertion)


@pytest.fixture
def pg(postgres_store_url: str) -> str:
    return postgres_store_url


def _interrupted(coro: Coroutine[Any, Any, Any], at: int, interrupt: Callable[[], None]) -> Generator[Any, Any, Any]:
    """`coro`'s await protocol, calling `interrupt` when it suspends for the `at`-th time (the `at`-th await that
    really waits: for the pool, a statement's round trip, a worker thread, the provider's answer...)."""
    value: Any = None
    error: BaseException | None = None
    suspensions = 0
    while True:
        try:
            waiting_on = coro.send(value) if error is None else coro.throw(error)
        except StopIteration as stop:
            return stop.value
        suspensions += 1
        if suspensions == at:
            interrupt()
        try:
            value, error = (yield waiting_on), None
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # the task's cancellation, thrown in at the await: into the coroutine
            value, error = None, exc


class Interrupted:
    """Await `coro`, interrupted at its `at`-th suspension: the task is cancelled there (``how="cancel"``), or an
    ``asyncio.timeout`` around it expires there (``how="timeout"``)."""

    def __init__(self, coro: Coroutine[Any, Any, str], at: int, how: str) -> None:
        self._coro, self._at, self._how = coro, at, how

    async def run(self) -> str:
        if self._how == "cancel":
            task = asyncio.current_task()
            assert task is not None
            return await _Awaiting(_interrupted(self._coro, self._at, task.cancel))
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(None) as timeout:
            return await _Awaiting(_interrupted(self._coro, self._at, lambda: timeout.reschedule(loop.time())))


class _Awaiting:
    def __init__(self, steps: Generator[Any, Any, Any]) -> None:
        self._steps = steps

    def __await__(self) -> Generator[Any, Any, Any]:
        return (yield from self._steps)


async def _pool_settled(store: AsyncPostgresStore, url: str) -> dict[str, int]:
    """Wait until every pooled connection is back and idle and no session of this database (the pool's, the
    listener's, the liveness lock's) is inside a transaction or a statement; the pool's stats then."""
    deadline = time.monotonic() + SETTLE
    busy: list[tuple[Any, ...]] = []
    while time.monotonic() < deadline:
        stats = store._pool.get_stats()
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            cursor = await conn.execute(
                "SELECT application_name, state, query FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() AND state <> 'idle'"
            )
            busy = await cursor.fetchall()
        if not busy and stats["pool_available"] == stats["pool_size"] and stats.get("requests_waiting", 0) == 0:
            return stats
        await asyncio.sleep(0.02)
    pytest.fail(f"the pool did not settle: stats {store._pool.get_stats()}, busy sessions {busy}")


async def _cancelled_state(keeper: AsyncKeeper, name: str) -> str:
    """The store's state for `name` after a cancelled refresh, one of `CANCELLED_STATES`; no lease left behind."""
    store = keeper.store
    grant = await store.get_grant(name)
    attempts = await store.list_attempts(name)
    assert await store.lease_holder(name, now=keeper.clock.now()) is None
    if grant.generation == 2:
        assert [a.state for a in attempts] == [AttemptState.COMMITTED]
        return "committed"
    assert grant.generation == 1
    if not attempts:
        return "untouched"
    assert [a.state for a in attempts] == [AttemptState.NOT_SENT]
    return "not_sent"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_a_refresh_cancelled_at_each_await_leaves_a_clean_pool_and_recovers(pg: str, make_sim: Sim,
                                                                                  how: str) -> None:  # fmt: skip
    """For n = 1, 2, ..., a fresh grant's first access_token is interrupted at its n-th suspension, until the call
    completes three times running (past the last suspension), sweeping again until the interruptions have landed
    before the claim, after it, and after the send (which then runs on to the commit). After each interruption:
    the pool is settled, the store holds one of `CANCELLED_STATES`, and the next access_token on the same keeper
    returns a token the provider accepts, with no refresh token refused (the provider rotates with no grace: a
    successor lost to the cancellation would be refused)."""
    sim = make_sim(rotation="always", reuse_grace=0)
    with Keeper.open(pg) as setup:
        setup.add_provider(provider_for(sim))
    states: Counter[str] = Counter()
    async with await AsyncKeeper.open(pg, policy=POLICY) as keeper:
        assert isinstance(keeper.store, AsyncPostgresStore)
        await keeper.access_token(await _new_grant(keeper, sim, "warm-up"))  # the listener and liveness lock exist
        for sweep in range(SWEEPS):
            if states.keys() == CANCELLED_STATES:
                break
            completed = 0
            for at in range(1, 200):
                if completed == 3:
                    break
                name = await _new_grant(keeper, sim, f"g{sweep}-{at}")
                task = asyncio.create_task(Interrupted(keeper.access_token(name), at, how).run())
                await asyncio.wait([task])
                if not task.cancelled() and task.exception() is None:
                    assert resource_ok(sim, task.result())
                    completed += 1
                    continue
                completed = 0
                assert task.cancelled() if how == "cancel" else isinstance(task.exception(), TimeoutError)
                stats = await _pool_settled(keeper.store, pg)
                assert stats.get("requests_errors", 0) == 0
                state = await _cancelled_state(keeper, name)
                states[state] += 1
                assert resource_ok(sim, await keeper.access_token(name)), (at, state)
                assert (await keeper.store.get_grant(name)).generation == 2  # one provider call, no re-send
            else:
                pytest.fail("the refresh never completed")
    assert states.keys() == CANCELLED_STATES, states
    assert sim.stats.errors == {}, sim.stats


async def _new_grant(keeper: AsyncKeeper, sim: Any, name: str) -> str:
    await keeper.import_grant(name, provider="sim", refresh_token=sim.issue_grant())
    return name


async def _transaction_state(store: AsyncPostgresStore, name: str) -> str:
    """Which of a claim's and a commit's transactions took effect for `name`: each whole, or not at all."""
    grant = await store.get_grant(name)
    attempts = [a.state for a in await store.list_attempts(name)]
    holder = await store.lease_holder(name, now=T0)
    if grant.generation == 2:
        assert attempts == [AttemptState.COMMITTED] and holder is None
        return "committed"
    assert grant.generation == 1
    if attempts:
        assert attempts == [AttemptState.OPEN] and holder is not None and holder.worker == "w1"
        return "claimed"
    assert holder is None
    return "untouched"


@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_store_transactions_cancelled_at_each_await_are_whole_or_absent(pg: str, how: str) -> None:
    """The native store's own awaits, which the keeper's driver no longer lets a cancellation reach during a
    refresh but any other caller's task may: a claim then a commit called directly, interrupted at their n-th
    suspension (a pooled connection, a statement's round trip, the COMMIT, the liveness lock's worker thread),
    swept as above, at least `MIN_STORE_SWEEPS` times. On a one-connection pool, so every call gets the connection
    the interrupted one had: it is out of pipeline mode with no transaction open (or it was replaced), each
    transaction took effect whole or not at all, and the same store then reads the grant and refreshes it."""
    store = await AsyncPostgresStore.open(pg, max_connections=1)
    states: Counter[str] = Counter()
    try:
        for sweep in range(SWEEPS):
            if sweep >= MIN_STORE_SWEEPS and states.keys() == CRASH_STATES:
                break
            completed = 0
            for at in range(1, 200):
                if completed == 3:
                    break
                name = f"s{sweep}-{at}"
                await _grant(store, name)
                task = asyncio.create_task(Interrupted(_refresh_once(store, name), at, how).run())
                await asyncio.wait([task])
                if not task.cancelled() and task.exception() is None:
                    completed += 1
                    continue
                completed = 0
                assert task.cancelled() if how == "cancel" else isinstance(task.exception(), TimeoutError)
                await _pool_settled(store, pg)
                async with store._pool.connection() as conn:
                    assert conn.pgconn.pipeline_status == pq.PipelineStatus.OFF, (at, conn)
                    assert conn.pgconn.transaction_status == pq.TransactionStatus.IDLE, (at, conn)
                state = await _transaction_state(store, name)
                states[state] += 1
                assert await _refresh_once(store, name) == (3 if state == "committed" else 2)
            else:
                pytest.fail("the claim and commit never completed")
        assert states.keys() == CRASH_STATES, states
    finally:
        await store.close()


async def _claim(store: AsyncPostgresStore, name: str) -> None:
    await store.claim(name, worker="w1", lease_ttl=30.0, now=T0, force=True, seen_generation=None)


@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_a_first_claim_cancelled_at_each_await_leaves_its_connection_usable(pg: str, how: str) -> None:
    """A fresh store's first claim (it also takes the process's liveness lock) interrupted at its n-th suspension,
    for every n until it completes: on a one-connection pool, the next call gets the same connection, out of
    pipeline mode, and reads the grant (a connection left in pipeline mode answers every read with no rows)."""
    for at in range(1, 100):
        store = await AsyncPostgresStore.open(pg, max_connections=1)
        try:
            name = f"c{at}"
            await _grant(store, name)
            task = asyncio.create_task(Interrupted(_claim(store, name), at, how).run())
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is None:
                break
            await _pool_settled(store, pg)
            async with store._pool.connection() as conn:
                assert conn.pgconn.pipeline_status == pq.PipelineStatus.OFF, (at, conn)
            assert (await store.get_grant(name)).generation == 1
        finally:
            await store.close()
    else:
        pytest.fail("the claim never completed")


@pytest.mark.slow
async def test_many_tasks_cancelled_at_random_on_one_grant(pg: str, make_sim: Sim) -> None:
    """Two keepers (two workers) on the native store, 24 tasks each, ask for one grant's 1-second access token for
    a few seconds; most calls are cut off at a random moment: an ``asyncio.timeout`` of up to 30 ms, or a
    ``task.cancel()`` after up to 30 ms. The provider rotates with no grace and sees one call per generation and
    no refused token; no call fails (no invalid_grant, lost_in_flight, pool timeout or store error); the grant
    stays active and the pools settle with every connection back and idle."""
    sim = make_sim(rotation="always", reuse_grace=0, access_ttl=1)
    with Keeper.open(pg) as setup:
        add_grant(setup, sim)
    rng = random.Random(20261206)
    counts: Counter[str] = Counter()
    errors: list[str] = []
    keepers = [await AsyncKeeper.open(pg, policy=POLICY, worker=f"w{n}") for n in range(2)]
    try:
        deadline = asyncio.get_running_loop().time() + 5.0

        async def ask(keeper: AsyncKeeper) -> None:
            while asyncio.get_running_loop().time() < deadline:
                how, within = rng.choice(("timeout", "cancel", "wait")), rng.uniform(0, 0.03)
                call = asyncio.create_task(keeper.access_token("g"))
                if how == "cancel":
                    asyncio.get_running_loop().call_later(within, call.cancel)
                try:
                    async with asyncio.timeout(within if how == "timeout" else None):
                        await call
                    counts["served"] += 1
                except TimeoutError:
                    counts["timed_out"] += 1
                except asyncio.CancelledError:
                    counts["cancelled"] += 1
                except GrantkeeperError as exc:
                    errors.append(f"{keeper.worker}: {exc}")

        await asyncio.gather(*(ask(keeper) for keeper in keepers for _ in range(24)))
        for keeper in keepers:
            assert isinstance(keeper.store, AsyncPostgresStore)
            await _pool_settled(keeper.store, pg)
        grant = await keepers[0].store.get_grant("g")
        assert resource_ok(sim, await keepers[0].access_token("g"))
    finally:
        for keeper in keepers:
            await keeper.aclose()
    assert not errors, errors
    assert counts["served"] and counts["cancelled"] and counts["timed_out"], counts
    assert sim.stats.errors == {}, sim.stats  # no refresh token refused: no invalid_grant
    assert grant.state is GrantState.ACTIVE and grant.generation >= 3, grant
    # One provider call per generation (each call committed; none was lost or repeated); the last access_token may
    # have refreshed once more after `grant` was read.
    assert sim.stats.refresh_calls in (grant.generation - 1, grant.generation), (sim.stats, grant.generation)
    assert sim.stats.successes == sim.stats.refresh_calls


async def test_a_refresh_cancelled_in_its_claim_leaves_nothing_for_another_worker_to_wait_for(
    pg: str, make_sim: Sim
) -> None:
    """A forced refresh cancelled while its claim runs (the claim still completes: lease and attempt recorded)
    releases the lease and closes the attempt as not sent, since its request never started. Another worker (another
    keeper, as on another host) then refreshes at once: it neither waits out the lease nor defers a re-send of a
    possibly spent token for `adopt_after` (60 s), which is what an attempt left open would cost it."""
    sim = make_sim(rotation="always", reuse_grace=0)
    with Keeper.open(pg) as setup:
        add_grant(setup, sim)
    async with (
        await AsyncKeeper.open(pg, policy=POLICY, worker="w0") as first,
        await AsyncKeeper.open(pg, policy=POLICY, worker="w1") as second,
    ):
        task = asyncio.create_task(Interrupted(first.refresh("g", force=True), 1, "cancel").run())
        await asyncio.wait([task])
        assert task.cancelled()
        assert resource_ok(sim, await second.access_token("g"))
        attempts = await second.store.list_attempts("g")
    assert [(a.worker, a.state) for a in attempts] == [("w1", AttemptState.COMMITTED), ("w0", AttemptState.NOT_SENT)]
    assert sim.stats.refresh_calls == 1 and sim.stats.errors == {}  # type: ignore[attr-defined]
