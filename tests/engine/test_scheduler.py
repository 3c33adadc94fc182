"""The refresh scheduler against the simulator: hot grants are refreshed before their tokens stop being served, so
callers never pay for a refresh; idle grants are left alone; one refresh per generation; a stop finishes what is
in flight. Real SQLite files and PostgreSQL, real HTTP over loopback, the real clock."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from grantkeeper import Keeper, Secret
from grantkeeper.engine.scheduler import Scheduler, SchedulerOptions
from grantkeeper.protocol.planning import SchedulePolicy
from grantkeeper.stores import open_store
from grantkeeper.stores.sql import SQLStore
from grantkeeper.tokens.sender import AsyncHttpSender
from grantkeeper.tokens.transport import async_client
from tests.helpers import provider_for

Sim = Callable[..., Any]
TOKEN_LIFE = 4.0
SKEW = 0.5
#: Leads short enough that a 4 s token is refreshed about 1 s before it stops being served.
PLAN = SchedulePolicy(lead_fraction=0.25, lead_min=0.5, lead_max=2.0, jitter_fraction=0.5)


def _grants(store: SQLStore, sim: Any, count: int, *, hot: bool) -> list[str]:
    store.put_provider(provider_for(sim, skew=SKEW), now=time.time())
    names = [f"g{i:02d}" for i in range(count)]
    for name in names:
        store.import_grant(name, provider="sim", refresh_token=Secret(sim.issue_grant()), scopes=(), now=time.time())
        if hot:
            store.set_hot(name, True)
    return names


def _run_for(store: SQLStore, seconds: float, **options: Any) -> Scheduler:
    async def run() -> Scheduler:
        async with async_client() as http:
            scheduler = Scheduler(store, sender=AsyncHttpSender(http), worker="scheduler",
                                  options=SchedulerOptions(plan=PLAN, tick=0.2, **options))  # fmt: skip
            runner = asyncio.create_task(scheduler.run())
            await asyncio.sleep(seconds)
            scheduler.stop()
            await runner
            return scheduler

    return asyncio.run(run())


def test_hot_grants_are_refreshed_before_any_caller_needs_to(shared_store_url: str, make_sim: Sim) -> None:
    sim = make_sim(access_ttl=TOKEN_LIFE)
    store = open_store(shared_store_url)
    names = _grants(store, sim, 12, hot=True)
    stop = threading.Event()

    def callers() -> None:  # another process's keeper, reading tokens all along
        with Keeper.open(shared_store_url, worker="caller") as keeper:
            while not stop.is_set():
                for name in names:
                    keeper.access_token(name)
                time.sleep(0.05)

    try:
        reader = threading.Thread(target=callers)
        scheduler = _run_for(store, 1.0)  # the first tokens: the imported grants have none
        reader.start()
        scheduler = _run_for(store, 3 * TOKEN_LIFE)
        stop.set()
        reader.join()
        attempts = [a for n in names for a in store.list_attempts(n, limit=100)]
        generations = {n: store.get_grant(n).generation for n in names}
    finally:
        stop.set()
        store.close()
    assert [a for a in attempts if a.worker == "caller"] == []  # no caller paid for a refresh
    per_generation = Counter((a.grant, a.generation) for a in attempts)
    assert max(per_generation.values()) == 1  # one refresh per generation
    assert min(generations.values()) >= 4  # the first token, then one per token lifetime at least twice
    assert sim.stats.errors == {} and sim.stats.reuse_detections == 0
    assert scheduler.stats.missed == 0 and scheduler.stats.outcomes["refreshed"] >= 2 * len(names)
    assert sum(scheduler.stats.batches.values()) < 2 * sum(scheduler.stats.outcomes.values())  # commits shared


def test_idle_grants_are_left_alone_until_used(sqlite_url: str, make_sim: Sim) -> None:
    sim = make_sim(access_ttl=TOKEN_LIFE)
    store = open_store(sqlite_url)
    names = _grants(store, sim, 4, hot=False)
    try:
        _run_for(store, 1.5)
        untouched = {n: store.get_grant(n).generation for n in names}
        store.note_used([names[0]], now=time.time(), window=600.0)
        _run_for(store, 1.5)
        after = {n: store.get_grant(n).generation for n in names}
    finally:
        store.close()
    assert untouched == dict.fromkeys(names, 1)  # nothing to keep alive: no lifetime ends, nobody uses them
    assert after[names[0]] >= 2 and all(after[n] == 1 for n in names[1:])  # used: hot, refreshed ahead


@pytest.mark.parametrize("hot", [True])
def test_a_stop_finishes_the_refreshes_in_flight(sqlite_url: str, make_sim: Sim, hot: bool) -> None:
    from grantkeeper.testing.simulator import Delay

    sim = make_sim(access_ttl=TOKEN_LIFE)
    store = open_store(sqlite_url)
    names = _grants(store, sim, 3, hot=hot)
    sim.inject(Delay(1.0), times=3)
    try:
        scheduler = _run_for(store, 0.5)  # stopped while the three requests wait at the provider
        grants = [store.get_grant(n) for n in names]
        leases = [n for n in names if store.lease_holder(n, now=time.time()) is not None]
    finally:
        store.close()
    assert [g.generation for g in grants] == [2, 2, 2] and leases == []
    assert scheduler.stats.outcomes["refreshed"] == 3


def test_an_outage_at_one_provider_slows_only_its_grants(sqlite_url: str, make_sim: Sim) -> None:
    """Provider "down" answers 503 for 30 s. Its grants back off behind its gate (one probe at a time after a
    pause) and are all refreshed once it is back; provider "up"'s grants never miss their window meanwhile."""
    from grantkeeper.testing.simulator import HttpError

    life, outage = 6.0, 30.0
    sims = {"up": make_sim(access_ttl=life), "down": make_sim(access_ttl=life)}
    store = open_store(sqlite_url)
    names: dict[str, list[str]] = {}
    for provider, sim in sims.items():
        store.put_provider(provider_for(sim, name=provider, skew=SKEW), now=time.time())
        names[provider] = [f"{provider}-{i}" for i in range(8)]
        for name in names[provider]:
            store.import_grant(name, provider=provider, refresh_token=Secret(sim.issue_grant()), scopes=(),
                               now=time.time())  # fmt: skip
            store.set_hot(name, True)

    async def run() -> tuple[Scheduler, int, float]:
        async with async_client() as http:
            scheduler = Scheduler(store, sender=AsyncHttpSender(http), worker="scheduler",
                                  options=SchedulerOptions(plan=PLAN, tick=0.2, per_provider=4))  # fmt: skip
            runner = asyncio.create_task(scheduler.run())
            await asyncio.sleep(2.0)  # every grant's first token
            sims["down"].inject(HttpError(503), times=1_000_000)
            calls_before = sims["down"].stats.refresh_calls
            await asyncio.sleep(outage)
            sims["down"].clear_faults()
            during = sims["down"].stats.refresh_calls - calls_before
            back = time.time()
            deadline = back + 120.0
            while time.time() < deadline and not all(
                any(a.started_at > back and a.state.value == "committed" for a in store.list_attempts(n, limit=5))
                for n in names["down"]
            ):
                await asyncio.sleep(0.5)
            scheduler.stop()
            await runner
            return scheduler, during, back

    try:
        scheduler, during, back = asyncio.run(run())
        attempts = {n: store.list_attempts(n, limit=200)[::-1] for group in names.values() for n in group}
    finally:
        store.close()
    for name in names["down"]:  # recovered: refreshed after the outage, nothing spent or lost on the way
        assert any(a.started_at > back and a.state.value == "committed" for a in attempts[name]), name
    assert set(sims["down"].stats.errors) == {"server_error"}  # the 503s answered, and no invalid_grant
    assert sims["down"].stats.reuse_detections == 0
    # backed off: a few probes, not every grant's retries over and over (8 grants x 4 tries per refresh, every
    # `retry` seconds, would be 64 requests in 30 s without the gate)
    assert during < 48, during
    assert scheduler.stats.outcomes["provider_unavailable"] >= 1 and scheduler.stats.missed > 0  # its grants waited
    for name in names["up"]:  # on schedule all along: each refresh began while the previous token was served
        committed = [a for a in attempts[name] if a.state.value == "committed"]
        assert len(committed) >= (outage + 2.0) / life
        for earlier, later in itertools.pairwise(committed):
            assert earlier.finished_at is not None
            assert later.started_at < earlier.finished_at + life - SKEW, (name, earlier, later)
    assert sims["up"].stats.errors == {}


def test_a_refresh_that_fails_unexpectedly_gives_its_providers_slot_back(sqlite_url: str, make_sim: Sim) -> None:
    """A sender that raises something no refresh expects (a bug) fails that one refresh; with one slot at the
    provider, the grants after it are still refreshed."""
    sim = make_sim(access_ttl=TOKEN_LIFE)
    store = open_store(sqlite_url)
    names = _grants(store, sim, 3, hot=True)

    class BrokenOnce:
        def __init__(self, inner: AsyncHttpSender) -> None:
            self.inner, self.broken = inner, False

        async def send(self, request: Any, *, budget: float) -> Any:
            if not self.broken:
                self.broken = True
                raise RuntimeError("a bug in a sender")
            return await self.inner.send(request, budget=budget)

    async def run() -> Scheduler:
        async with async_client() as http:
            scheduler = Scheduler(store, sender=BrokenOnce(AsyncHttpSender(http)), worker="scheduler",
                                  options=SchedulerOptions(plan=PLAN, tick=0.2, per_provider=1))  # fmt: skip
            runner = asyncio.create_task(scheduler.run())
            await asyncio.sleep(2.0)
            scheduler.stop()
            await runner
            return scheduler

    try:
        scheduler = asyncio.run(run())
        generations = sorted(store.get_grant(n).generation for n in names)
    finally:
        store.close()
    assert scheduler.stats.outcomes["refreshed"] >= 2 and generations[-2:] == [2, 2]
