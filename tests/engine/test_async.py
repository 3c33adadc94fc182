"""AsyncKeeper runs the same protocol as Keeper: the failure-table rows hold through the async driver too."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from grantkeeper import (
    AsyncKeeper,
    AttemptState,
    ClientAuthFailed,
    GrantState,
    LostInFlight,
    ProviderUnavailable,
    RefreshPolicy,
)
from grantkeeper.testing import DropAfterRotate, HttpError
from tests.helpers import FAST_POLICY, provider_for, resource_ok

pytestmark = pytest.mark.anyio

Sim = Callable[..., object]


async def _open(url: str, sim: object, **provider: object) -> AsyncKeeper:
    keeper = await AsyncKeeper.open(url, policy=FAST_POLICY)
    await keeper.add_provider(provider_for(sim, **provider))  # type: ignore[arg-type]
    await keeper.import_grant("g", provider="sim", refresh_token=sim.issue_grant())  # type: ignore[attr-defined]
    return keeper


async def test_async_refresh_commits_and_caches(store_url: str, make_sim: Sim) -> None:
    """An async refresh commits generation 2 and later calls are served from the cache."""
    sim = make_sim()

    async with await _open(store_url, sim) as keeper:
        token = await keeper.access_token("g")
        assert [await keeper.access_token("g") for _ in range(10)] == [token] * 10
        assert (await keeper.status("g")).generation == 2

    assert resource_ok(sim, token)
    assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]


async def test_async_transient_retry_then_success(store_url: str, make_sim: Sim) -> None:
    """5xx answers are retried by the async driver with backoff; the grant stays healthy."""
    sim = make_sim()
    sim.inject(HttpError(502), times=2)  # type: ignore[attr-defined]

    async with await _open(store_url, sim) as keeper:
        assert (await keeper.refresh("g")).generation == 2


async def test_async_ambiguous_without_grace_is_lost_in_flight(store_url: str, make_sim: Sim) -> None:
    """Rotate-then-drop with no grace: the async driver re-sends once and reports lost_in_flight."""
    sim = make_sim()

    async with await _open(store_url, sim) as keeper:
        sim.inject(DropAfterRotate())  # type: ignore[attr-defined]
        with pytest.raises(LostInFlight):
            await keeper.refresh("g")
        assert (await keeper.status("g")).state is GrantState.NEEDS_REAUTH


async def test_async_ambiguous_within_grace_recovers(store_url: str, make_sim: Sim) -> None:
    """Rotate-then-drop inside the grace: the async re-send gets the successor and commits it (generation 2),
    then one more refresh with it replaces the re-send's access token, never served on trust (generation 3)."""
    sim = make_sim(reuse_grace=30)

    async with await _open(store_url, sim, grace=30) as keeper:
        sim.inject(DropAfterRotate())  # type: ignore[attr-defined]
        assert (await keeper.refresh("g")).generation == 3
        states = [a.state for a in (await keeper.status("g")).attempts]
        assert states == [AttemptState.COMMITTED, AttemptState.COMMITTED, AttemptState.AMBIGUOUS]


async def test_async_client_auth_failure(store_url: str, make_sim: Sim) -> None:
    """invalid_client through the async driver is client_auth_failed and leaves the grant active."""
    sim = make_sim()
    sim.inject(HttpError(401, error="invalid_client"))  # type: ignore[attr-defined]

    async with await _open(store_url, sim) as keeper:
        with pytest.raises(ClientAuthFailed):
            await keeper.refresh("g")
        assert (await keeper.status("g")).state is GrantState.ACTIVE


async def test_cancelled_refresh_commits_what_it_sent_then_stops(tmp_path: Path, make_sim: Sim) -> None:
    """A task cancelled while its request is in flight is cancelled once the exchange is over and the successor
    committed: the provider rotates with no grace, so stopping at the cancellation would have lost the grant (the
    next refresh's re-send refused, lost_in_flight). The lease is released and nothing more is sent."""
    from grantkeeper.testing import Delay

    sim = make_sim(reuse_grace=0)
    policy = RefreshPolicy(lease_ttl=11.0, request_timeout=5.0, wait_timeout=30.0, deadline=10.0)
    async with await AsyncKeeper.open(f"sqlite://{tmp_path}/s.db", policy=policy) as keeper:
        await keeper.add_provider(provider_for(sim))
        await keeper.import_grant("g", provider="sim", refresh_token=sim.issue_grant())  # type: ignore[attr-defined]
        sim.inject(Delay(1))  # type: ignore[attr-defined]
        task = asyncio.create_task(keeper.refresh("g"))
        while sim.stats.refresh_calls == 0:  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        status = await keeper.status("g")
        assert status.lease is None and status.generation == 2
        assert status.attempts[0].state is AttemptState.COMMITTED
        assert resource_ok(sim, await keeper.access_token("g"))
    assert sim.stats.refresh_calls == 1 and sim.stats.errors == {}  # type: ignore[attr-defined]


async def test_async_connection_refused(store_url: str, make_sim: Sim) -> None:
    """A stopped provider gives ProviderUnavailable; attempts are recorded as never sent."""
    sim = make_sim()

    async with await _open(store_url, sim) as keeper:
        sim.stop()  # type: ignore[attr-defined]
        with pytest.raises(ProviderUnavailable):
            await keeper.refresh("g")
        assert {a.state for a in (await keeper.status("g")).attempts} == {AttemptState.NOT_SENT}


async def test_async_attempt_names_the_calling_task(store_url: str, make_sim: Sim) -> None:
    """The attempt history names the thread and the asyncio task that asked for the token."""
    sim = make_sim()
    async with await _open(store_url, sim) as keeper:
        await asyncio.create_task(keeper.access_token("g"), name="billing-sync-task")
        (attempt,) = await keeper.history("g")
    assert attempt.actor == f"{threading.current_thread().name}/billing-sync-task"
