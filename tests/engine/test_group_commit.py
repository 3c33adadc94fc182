"""Group commit in the engine: the unchanged refresh flow, driven by the async driver, on a store whose writing
transactions are shared between concurrent refreshes (`GroupCommit`). Against the simulator (a strictly rotating
provider that revokes a grant whose spent token comes back), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from grantkeeper import RefreshPolicy, Secret
from grantkeeper._clock import SystemClock
from grantkeeper.engine.drivers import drive_async
from grantkeeper.engine.group_commit import GroupCommit
from grantkeeper.engine.ports import AsyncSender
from grantkeeper.engine.threaded import threaded
from grantkeeper.protocol import refresh_flow
from grantkeeper.stores import open_store
from grantkeeper.stores.sql import SQLStore
from grantkeeper.tokens import aiohttp_transport
from grantkeeper.tokens.aiohttp_transport import AiohttpSender
from grantkeeper.tokens.sender import AsyncHttpSender
from grantkeeper.tokens.transport import async_client
from tests.helpers import provider_for

Sim = Callable[..., Any]
GRANTS = 48


def _grants(store: SQLStore, sim: Any) -> list[str]:
    store.put_provider(provider_for(sim), now=time.time())
    names = [f"g{i:02d}" for i in range(GRANTS)]
    for name in names:
        store.import_grant(name, provider="sim", refresh_token=Secret(sim.issue_grant()), scopes=(), now=time.time())
    return names


@contextlib.asynccontextmanager
async def _sender(face: str) -> AsyncIterator[AsyncSender]:
    if face == "httpx":
        async with async_client() as http:
            yield AsyncHttpSender(http)
    else:
        async with aiohttp_transport.session() as session:
            yield AiohttpSender(session)


@pytest.mark.parametrize(("face", "flushers"), [("httpx", 1), ("aiohttp", 1), ("aiohttp", 2)])
def test_concurrent_refreshes_share_commits_and_lose_nothing(
    shared_store_url: str, make_sim: Sim, face: str, flushers: int
) -> None:
    rounds = 2
    sim = make_sim()
    store = open_store(shared_store_url)
    names = _grants(store, sim)

    async def run() -> list[int]:
        grouped = GroupCommit(threaded(store), lambda calls: asyncio.to_thread(store.perform_batch, calls),
                              flushers=flushers)  # fmt: skip
        async with _sender(face) as sender:
            for _ in range(rounds):
                flows = [refresh_flow(n, worker="scheduler", force=True, policy=RefreshPolicy()) for n in names]
                done = await asyncio.gather(*(drive_async(f, store=grouped, sender=sender, clock=SystemClock())
                                              for f in flows))  # fmt: skip
                assert all(r.grant.generation >= 2 for r in done)
        return grouped.sizes

    try:
        sizes = asyncio.run(run())
        generations = {n: store.get_grant(n).generation for n in names}
        leases = [n for n in names if store.lease_holder(n, now=time.time()) is not None]
    finally:
        store.close()
    assert generations == dict.fromkeys(names, 1 + rounds)  # one provider refresh per grant per round
    assert leases == []
    stats = sim.stats
    assert (
        stats.successes == GRANTS * rounds and stats.errors.get("invalid_grant", 0) == 0 and stats.reuse_detections == 0
    )
    # 2 writing transactions per refresh one at a time; shared here: far fewer commits than refreshes
    assert sum(sizes) == 2 * GRANTS * rounds
    assert len(sizes) < GRANTS * rounds and max(sizes) > 1


def test_at_most_flushers_batches_run_at_once_each_taking_its_grants_in_order() -> None:
    """With several flushers, no more batches than that are in flight at once, and each batch runs its calls in
    grant order (one grant's calls in the order they came), so two batches never wait on each other's row locks."""
    in_flight, peak, batches = 0, 0, []

    async def batch(calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        batches.append([(method, args[0]) for method, args, _ in calls])
        await asyncio.sleep(0.01)
        in_flight -= 1
        return [f"{method} {args[0]}" for method, args, _ in calls]

    names = [f"g{i:02d}" for i in range(40)]
    random.Random(7).shuffle(names)

    async def run() -> list[Any]:
        grouped: Any = GroupCommit(None, batch, flushers=2)  # type: ignore[arg-type]  # only batched calls are made

        async def arriving(method: str, name: str, at: float) -> Any:  # calls keep coming while batches run
            await asyncio.sleep(at)
            return await getattr(grouped, method)(name)

        calls = [arriving("claim", n, i * 0.001) for i, n in enumerate(names)]
        return await asyncio.gather(*calls, arriving("release", "g00", len(names) * 0.001))

    assert asyncio.run(run()) == [f"claim {n}" for n in names] + ["release g00"]
    assert peak == 2 and sum(len(b) for b in batches) == len(names) + 1
    for taken in batches:
        assert [grant for _, grant in taken] == sorted(grant for _, grant in taken)
    together = next(b for b in batches if ("release", "g00") in b)
    if ("claim", "g00") in together:  # one grant's calls keep their order
        assert together.index(("claim", "g00")) < together.index(("release", "g00"))


def test_a_call_queued_as_the_last_batch_ends_is_still_flushed() -> None:
    """A flow woken by the end of a batch (its HTTP answer came in meanwhile) queues its commit before the ended
    flusher's task is forgotten: a new flusher must still take it, or the flow waits forever."""

    async def run() -> tuple[Any, Any]:
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def batch(calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
            await asyncio.sleep(0)
            if not woken.done():
                woken.set_result(None)  # its waiter runs before the flusher's done callbacks
            return [args[0] for _, args, _ in calls]

        grouped: Any = GroupCommit(None, batch)  # type: ignore[arg-type]  # only batched calls are made

        async def late() -> Any:
            await woken
            return await grouped.claim("late")

        waiting = asyncio.create_task(late())
        first = await grouped.claim("first")
        return first, await asyncio.wait_for(waiting, 5)

    assert asyncio.run(run()) == ("first", "late")
