"""Concurrency proofs (I2, I4): many threads, tasks and processes; one provider call per expiry."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from grantkeeper import AsyncKeeper, Keeper, RefreshPolicy
from tests.helpers import FAST_POLICY, add_grant, resource_ok
from tests.workers import run_hammers

Sim = Callable[..., object]


def test_32_threads_share_one_refresh(sqlite_url: str, make_sim: Sim) -> None:
    """32 threads asking for an expired grant at once cause exactly one provider call and all get its token."""
    sim = make_sim()
    with Keeper.open(sqlite_url, policy=FAST_POLICY) as keeper:
        add_grant(keeper, sim)
        barrier = threading.Barrier(32)
        tokens: list[str] = []

        def worker() -> None:
            barrier.wait()
            tokens.append(keeper.access_token("g"))

        threads = [threading.Thread(target=worker) for _ in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(tokens) == 32 and len(set(tokens)) == 1
        assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]
        assert keeper.store.get_grant("g").generation == 2
        assert resource_ok(sim, tokens[0])


@pytest.mark.anyio
async def test_100_tasks_share_one_refresh(sqlite_url: str, make_sim: Sim) -> None:
    """100 asyncio tasks asking at once cause exactly one provider call and all get its token."""
    sim = make_sim()
    with Keeper.open(sqlite_url) as setup:
        add_grant(setup, sim)

    async with await AsyncKeeper.open(sqlite_url, policy=FAST_POLICY) as keeper:
        tokens = await asyncio.gather(*(keeper.access_token("g") for _ in range(100)))
    assert len(set(tokens)) == 1
    assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]
    assert resource_ok(sim, tokens[0])


def test_separate_keepers_in_one_process_coordinate_through_the_store(sqlite_url: str, make_sim: Sim) -> None:
    """Four keepers (four workers, separate caches) with 8 threads each: the store lease makes it one call."""
    sim = make_sim()
    keepers = [Keeper.open(sqlite_url, policy=FAST_POLICY) for _ in range(4)]
    add_grant(keepers[0], sim)
    barrier = threading.Barrier(32)
    tokens: list[str] = []

    def worker(keeper: Keeper) -> None:
        barrier.wait()
        tokens.append(keeper.access_token("g"))

    threads = [threading.Thread(target=worker, args=(k,)) for k in keepers for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in keepers:
        k.close()
    assert len(set(tokens)) == 1
    assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]


def test_forced_refreshes_in_parallel_spend_each_token_once(sqlite_url: str, make_sim: Sim) -> None:
    """Concurrent forced refreshes from several keepers never send the same refresh token twice."""
    sim = make_sim(reuse_detection=True)
    keepers = [Keeper.open(sqlite_url, policy=FAST_POLICY) for _ in range(4)]
    add_grant(keepers[0], sim)

    def worker(keeper: Keeper) -> None:
        for _ in range(5):
            keeper.refresh("g", force=True)

    threads = [threading.Thread(target=worker, args=(k,)) for k in keepers for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    generation = keepers[0].store.get_grant("g").generation
    for k in keepers:
        k.close()
    stats = sim.stats  # type: ignore[attr-defined]
    assert stats.errors == {} and stats.reuse_detections == 0
    assert stats.refresh_calls == generation - 1


#: FAST_POLICY's 1 s exchange deadline, under 32 threads on 2 busy cores, sometimes ends an answered exchange as
#: ambiguous; the flow then re-sends the possibly spent token once, knowingly (grace 0), and the provider's
#: invalid_grant is correct. That is the ambiguous-outcome path, tested elsewhere; here the question is whether
#: concurrency alone ever spends a token twice, so the deadline is the default one.
PATIENT_POLICY = RefreshPolicy(
    lease_ttl=30.0, request_timeout=10.0, wait_timeout=30.0, backoff_base=0.01, backoff_cap=0.05, deadline=20.0
)


def test_8_processes_x_4_threads_on_shared_grants(tmp_path: Path, make_sim: Sim) -> None:
    """8 processes x 4 threads on 2 grants with 1-second access tokens: provider calls equal the generations
    committed (the minimum), zero invalid_grant, and every token served works at the resource server."""
    sim = make_sim(access_ttl=1.0)
    url = f"sqlite://{tmp_path}/s.db"
    with Keeper.open(url) as setup:
        add_grant(setup, sim, grant="a")
        refresh_b = str(sim.issue_grant())  # type: ignore[attr-defined]
        setup.import_grant("b", provider="sim", refresh_token=refresh_b)
    resource = sim.base_url + "/resource"  # type: ignore[attr-defined]
    totals = run_hammers(8, url, ["a", "b"], 4.0, 4, resource, policy=PATIENT_POLICY)
    with Keeper.open(url) as check:
        advanced = sum(check.store.get_grant(n).generation - 1 for n in ("a", "b"))
    stats = sim.stats  # type: ignore[attr-defined]
    assert stats.errors.get("invalid_grant", 0) == 0
    assert not [k for k in totals if k.startswith("error:")], totals
    assert totals["resource_rejected"] == 0 and totals["calls"] > 0
    assert advanced >= 2  # each grant refreshed under contention at least once (more on a quiet machine)
    assert stats.refresh_calls == advanced, (stats, totals)
