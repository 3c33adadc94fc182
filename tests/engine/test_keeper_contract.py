"""The keeper's contract, on every face (Keeper, AsyncKeeper) and every store (memory, SQLite, PostgreSQL).

Each test is one body that runs six times through the `keeper` fixture (tests/keeper_fixtures.py), against
the provider simulator over real loopback HTTP. What a face or a store does differently belongs elsewhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from grantkeeper import (
    AsyncKeeper,
    AttemptState,
    ConfigurationError,
    GrantState,
    Keeper,
    RevokedOrExpired,
    UnknownGrant,
)
from grantkeeper._exceptions import SpentRefreshToken
from grantkeeper.testing import Delay
from tests.helpers import provider_for, resource_ok
from tests.keeper_fixtures import Face, SyncFace, add_grant_to, another_keeper, at_once

pytestmark = pytest.mark.anyio

Sim = Callable[..., object]
DAY = 86400.0
SHARED_STORE_KINDS = ["sqlite", "postgres"]  # memory:// is private to one keeper


def refresh_calls(sim: object) -> int:
    return int(sim.stats.refresh_calls)  # type: ignore[attr-defined]


async def test_access_token_is_served_from_the_cache(keeper: Face, make_sim: Sim) -> None:
    """The first call refreshes once (generation 2) and the token works at the resource server; later calls
    get the same token without asking the provider again."""
    sim = make_sim()
    await add_grant_to(keeper, sim)
    token = await keeper.access_token("g")
    assert resource_ok(sim, token)
    assert [await keeper.access_token("g") for _ in range(10)] == [token] * 10
    assert refresh_calls(sim) == 1
    assert (await keeper.status("g")).generation == 2


async def test_concurrent_callers_share_one_refresh(keeper: Face, make_sim: Sim) -> None:
    """Eight callers at once (threads on Keeper, tasks on AsyncKeeper) while the provider is slow: one refresh
    reaches the provider, and every caller gets its token."""
    sim = make_sim()
    await add_grant_to(keeper, sim)
    sim.inject(Delay(0.3))  # type: ignore[attr-defined]
    tokens = await at_once(keeper, [lambda: keeper.access_token("g")] * 8)
    assert len(set(tokens)) == 1 and resource_ok(sim, tokens[0])
    assert refresh_calls(sim) == 1
    assert (await keeper.status("g")).generation == 2


@pytest.mark.parametrize("store_url", SHARED_STORE_KINDS, indirect=True)
async def test_keepers_sharing_a_store_share_one_refresh(keeper: Face, store_url: str, make_sim: Sim) -> None:
    """Two keepers on one store (separate caches and worker ids, as two processes), four callers each at once:
    the store's lease lets one refresh reach the provider, and the other keeper serves what it committed."""
    sim = make_sim()
    await add_grant_to(keeper, sim)
    sim.inject(Delay(0.3))  # type: ignore[attr-defined]
    async with another_keeper(keeper, store_url) as other:
        tokens = await at_once(keeper, [lambda k=k: k.access_token("g") for k in (keeper, other) for _ in range(4)])
        assert len(set(tokens)) == 1 and resource_ok(sim, tokens[0])
        assert refresh_calls(sim) == 1
        assert (await other.status("g")).generation == 2


async def test_forced_refresh_bumps_the_generation(keeper: Face, make_sim: Sim) -> None:
    """refresh(force=True) always asks the provider: each one commits the next generation and a new token,
    which is what access_token serves from then on."""
    sim = make_sim()
    await add_grant_to(keeper, sim)
    first = await keeper.refresh("g", force=True)
    served = await keeper.access_token("g")
    second = await keeper.refresh("g", force=True)
    assert (first.generation, second.generation) == (2, 3)
    assert second.refresh_fp != first.refresh_fp
    assert await keeper.access_token("g") != served
    assert refresh_calls(sim) == 2


async def test_report_rejected_invalidates_the_served_token(keeper: Face, make_sim: Sim) -> None:
    """A 401 reported for the served token drops it: the next call refreshes. A report about a token no longer
    served changes nothing."""
    sim = make_sim()
    await add_grant_to(keeper, sim)
    rejected = await keeper.access_token("g")
    assert await keeper.report_rejected("g", rejected) is True
    assert (await keeper.status("g")).access_valid is False
    replacement = await keeper.access_token("g")
    assert replacement != rejected and resource_ok(sim, replacement)
    assert refresh_calls(sim) == 2
    assert await keeper.report_rejected("g", rejected) is False
    assert await keeper.access_token("g") == replacement
    assert refresh_calls(sim) == 2


async def test_status_doctor_and_history_describe_a_healthy_grant(keeper: Face, make_sim: Sim) -> None:
    """After two refreshes: status shows the grant active at generation 3 with the fingerprint history received
    last; doctor says healthy; history lists both attempts newest first, each committed. No token anywhere."""
    sim = make_sim()
    imported = await add_grant_to(keeper, sim)
    await keeper.refresh("g", force=True)
    grant = await keeper.refresh("g", force=True)
    status = await keeper.status("g")
    assert (status.state, status.generation, status.access_valid) == (GrantState.ACTIVE, 3, True)
    assert status.refresh_fp == grant.refresh_fp
    diagnosis = await keeper.doctor("g")
    assert diagnosis.healthy and diagnosis.generation == 3
    newest, oldest = await keeper.history("g")
    assert (oldest.generation, oldest.new_generation, newest.generation, newest.new_generation) == (1, 2, 2, 3)
    assert newest.received_fp == grant.refresh_fp and newest.worker == keeper.worker
    assert {oldest.state, newest.state} == {AttemptState.COMMITTED}
    text = repr(status.as_dict()) + repr(diagnosis.as_dict()) + repr([newest, oldest])
    assert imported not in text and grant.refresh_token.reveal() not in text  # type: ignore[union-attr]


@pytest.mark.parametrize("store_url", SHARED_STORE_KINDS, indirect=True)
async def test_a_cold_keeper_serves_the_stored_token_and_a_closed_one_refuses(
    keeper: Face, store_url: str, make_sim: Sim
) -> None:
    """A keeper that never saw the grant serves the token another committed, from one store read (no refresh,
    the same generation, then from its cache); once closed, a cache miss is refused with a typed error."""
    sim = make_sim()
    await add_grant_to(keeper, sim)
    token = await keeper.access_token("g")
    async with another_keeper(keeper, store_url) as other:
        assert await other.access_token("g") == token
        served = other.served("g")  # plain call on both faces: no I/O
        assert served is not None and served.generation == 2 and served.access_token.reveal() == token
        assert await other.access_token("g") == token
    assert refresh_calls(sim) == 1
    with pytest.raises(ConfigurationError, match="this keeper is closed"):
        await other.access_token("another-grant")


async def test_unknown_grant_is_an_error_not_an_empty_answer(keeper: Face) -> None:
    for ask in (keeper.status, keeper.doctor, keeper.history, keeper.access_token):
        with pytest.raises(UnknownGrant):
            await ask("nope")


async def test_revoked_grant_needs_reauth_and_doctor_says_why(keeper: Face, make_sim: Sim) -> None:
    """The provider revoked the grant: the refresh fails with RevokedOrExpired, the grant needs a new consent,
    and doctor names the cause."""
    sim = make_sim()
    refresh = await add_grant_to(keeper, sim)
    await keeper.add_provider(dataclasses.replace(provider_for(sim), refresh_idle_ttl=DAY))
    await keeper.refresh("g", force=True)
    sim.revoke_family(refresh)  # type: ignore[attr-defined]
    with pytest.raises(RevokedOrExpired):
        await keeper.refresh("g", force=True)
    assert (await keeper.status("g")).state is GrantState.NEEDS_REAUTH
    diagnosis = await keeper.doctor("g")
    assert diagnosis.cause == "revoked_or_expired" and diagnosis.state == "needs_reauth"


async def test_import_refuses_a_token_the_grant_already_spent(keeper: Face, make_sim: Sim) -> None:
    """Re-importing the refresh token a committed refresh spent is refused before anything is stored or sent
    (the provider would see reuse and revoke the family); the grant keeps working."""
    sim = make_sim()
    spent = await add_grant_to(keeper, sim)
    await keeper.refresh("g", force=True)
    before = await keeper.status("g")
    with pytest.raises(SpentRefreshToken):
        await keeper.import_grant("g", provider="sim", refresh_token=spent)
    after = await keeper.status("g")
    assert (after.generation, after.refresh_fp) == (before.generation, before.refresh_fp)
    assert (await keeper.refresh("g", force=True)).generation == 3
    assert sim.stats.reuse_detections == 0  # type: ignore[attr-defined]
    assert refresh_calls(sim) == 2


async def test_keepalive_refreshes_only_grants_inside_the_margin(keeper: Face, make_sim: Sim) -> None:
    """With a 60-day idle lifetime, a grant just imported is outside a 1-day margin (left alone) and inside a
    61-day one (refreshed, generation 2)."""
    sim = make_sim()
    await add_grant_to(keeper, sim)
    await keeper.add_provider(dataclasses.replace(provider_for(sim), refresh_idle_ttl=60 * DAY))
    assert await keeper.keepalive(margin=DAY) == []
    assert refresh_calls(sim) == 0
    [result] = await keeper.keepalive(margin=61 * DAY)
    assert (result.grant, result.action, result.detail) == ("g", "refreshed", "generation 2")
    assert refresh_calls(sim) == 1
    assert (await keeper.status("g")).generation == 2


async def test_each_face_is_the_keeper_it_names(keeper: Face, face: str) -> None:
    """The suite drives what it says: AsyncKeeper itself on the async face, a Keeper on the sync one."""
    if face == "async":
        assert isinstance(keeper, AsyncKeeper)
    else:
        assert isinstance(keeper, SyncFace) and type(keeper.sync) is Keeper


def test_a_plain_test_gets_a_plain_keeper(keeper: Keeper) -> None:
    assert type(keeper) is Keeper
