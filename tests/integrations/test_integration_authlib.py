"""Authlib bridge: existing OAuth2Session / AsyncOAuth2Client call sites, refresh owned by the keeper.

The comparison tests keep the reason for this project visible: the same scenario (workers sharing one grant
at a rotating provider with reuse detection and no grace) run with plain Authlib and its documented
``update_token`` persistence loses the grant to ``invalid_grant``; run through the bridge it does not.
"""

from __future__ import annotations

import asyncio
import importlib
import sqlite3
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from authlib.deprecate import AuthlibDeprecationWarning
from authlib.integrations.base_client import OAuthError
from authlib.integrations.requests_client import OAuth2Session

from grantkeeper import AsyncKeeper, ConfigurationError, GrantkeeperError, Keeper
from grantkeeper.integrations import OUTCOME_KEY, AuthOutcome, MissingExtra
from grantkeeper.integrations.authlib_bridge import KeeperAsyncOAuth2Client, KeeperOAuth2Session
from grantkeeper.testing.clock import FakeClock
from tests.helpers import FAST_POLICY, add_grant
from tests.integration_support import EXPIRE_ALL, Sim, keeper, resource
from tests.keeper_fixtures import add_grant_to
from tests.workers import SPAWN, run_counting

with warnings.catch_warnings():  # Authlib falls back from httpx2 to httpx with a deprecation warning
    warnings.simplefilter("ignore", AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client

WORKERS = 4
ITERATIONS = 5


def stats(sim: object) -> Any:
    return sim.stats  # type: ignore[attr-defined]


pytest_plugins = ["tests.integration_fixtures"]  # the clock and sim fixtures
__all__ = ["keeper"]  # the fixture, from tests/integration_support.py


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    """The keeper (tests.integration_support.keeper, holding grant "g") is on SQLite here."""
    return sqlite_url


# ----------------------------------------------------------------------------------------- call sites


def test_session_call_sites_keep_working(keeper: Keeper, sim: object) -> None:
    """get / ensure_active_token / token / refresh_token work as before; the refresh goes through the keeper."""
    session = KeeperOAuth2Session(keeper, "g", client_id="sim-client", default_timeout=10)
    assert session.get(resource(sim)).status_code == 200
    assert session.ensure_active_token() is True
    before = session.token["access_token"]
    assert before == keeper.access_token("g") and "refresh_token" not in session.token
    generation = keeper.store.get_grant("g").generation
    refreshed = session.refresh_token("https://ignored.invalid/token", refresh_token="ignored")
    assert refreshed["access_token"] == keeper.access_token("g") != before
    assert keeper.store.get_grant("g").generation == generation + 1
    assert stats(sim).refresh_calls == 2


def test_session_retries_a_rejected_token(keeper: Keeper, sim: object, clock: FakeClock) -> None:
    """Unlike plain Authlib, a 401 invalid_token is reported to the keeper and the request re-sent once."""
    session = KeeperOAuth2Session(keeper, "g")
    session.ensure_active_token()
    clock.advance(EXPIRE_ALL)
    response = session.get(resource(sim), timeout=10)
    assert response.status_code == 200 and getattr(response, OUTCOME_KEY) is AuthOutcome.RETRIED
    assert stats(sim).refresh_calls == 2


def test_ownership_arguments_are_refused(keeper: Keeper, sim: object) -> None:
    """token= / update_token= would hand the grant back to Authlib; fetch_token would spend a code outside the
    keeper. All three are refused before anything is sent."""
    with pytest.raises(ConfigurationError, match="update_token"):
        KeeperOAuth2Session(keeper, "g", update_token=print)
    with pytest.raises(ConfigurationError, match="token"):
        KeeperOAuth2Session(keeper, "g", token={"access_token": "x"})
    with pytest.raises(ConfigurationError, match="import_grant"):
        KeeperOAuth2Session(keeper, "g").fetch_token(sim.url, grant_type="client_credentials")  # type: ignore[attr-defined]
    assert stats(sim).refresh_calls == 0


@pytest.mark.anyio
async def test_each_face_refuses_the_other_faces_keeper(sqlite_url: str) -> None:
    """Both faces share one constructor that checks the keeper against the face: the async client needs an
    AsyncKeeper (a sync keeper would block its event loop), the sync session a Keeper. The wrong one is a
    ConfigurationError naming the face and the keeper it needs, before any request."""
    with (
        Keeper.open(sqlite_url, policy=FAST_POLICY) as sync_keeper,
        pytest.raises(ConfigurationError, match="KeeperAsyncOAuth2Client needs a grantkeeper AsyncKeeper"),
    ):
        KeeperAsyncOAuth2Client(sync_keeper, "g")  # type: ignore[arg-type]
    async with await AsyncKeeper.open(sqlite_url, policy=FAST_POLICY) as async_keeper:
        with pytest.raises(ConfigurationError, match="KeeperOAuth2Session needs a grantkeeper Keeper"):
            KeeperOAuth2Session(async_keeper, "g")  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_async_client_call_sites_keep_working(sqlite_url: str, sim: object, clock: FakeClock) -> None:
    """Async: request, stream, ensure_active_token, refresh_token through an AsyncKeeper; 401 retried once."""

    async with await AsyncKeeper.open(sqlite_url, policy=FAST_POLICY) as keeper:
        await add_grant_to(keeper, sim)
        async with KeeperAsyncOAuth2Client(keeper, "g", timeout=10) as client:
            assert (await client.get(resource(sim))).status_code == 200
            async with client.stream("GET", resource(sim)) as streamed:
                assert streamed.status_code == 200
            assert await client.ensure_active_token() is True
            before = client.token["access_token"]
            after = (await client.refresh_token())["access_token"]
            assert after == await keeper.access_token("g") != before
            clock.advance(EXPIRE_ALL)
            retried = await client.get(resource(sim))
            assert retried.status_code == 200 and retried.extensions[OUTCOME_KEY] is AuthOutcome.RETRIED
            with pytest.raises(ConfigurationError, match="import_grant"):
                await client.fetch_token(sim.url)  # type: ignore[attr-defined]
    assert stats(sim).refresh_calls == 3  # first token, refresh_token(), the 401


def test_missing_authlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing the bridge without Authlib installed says which extra to install."""
    monkeypatch.setitem(sys.modules, "authlib.deprecate", None)
    monkeypatch.delitem(sys.modules, "grantkeeper.integrations.authlib_bridge")
    with pytest.raises(MissingExtra, match=r"pip install 'grantkeeper\[authlib\]'"):
        importlib.import_module("grantkeeper.integrations.authlib_bridge")


# ------------------------------------------------------------------------------------------ comparison


def _expired_seed(db: Path, refresh_token: str) -> None:
    """Authlib's documented persistence: one row per token, written by update_token. Seeded already expired."""
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE oauth_tokens (name TEXT PRIMARY KEY, access_token TEXT, refresh_token TEXT, "
                     "expires_at INTEGER)")  # fmt: skip
        conn.execute("INSERT INTO oauth_tokens VALUES ('g', 'expired', ?, ?)", (refresh_token, int(time.time()) - 60))
    conn.close()


def plain_authlib_worker(db: str, sim: dict[str, str], barrier: Any, queue: Any) -> None:
    """One process of an app using plain Authlib as documented: load the token, build a session with
    ``update_token`` that finds the row by the refresh token just spent, make requests."""
    counts: Counter[str] = Counter()
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)

    def load() -> dict[str, Any]:
        row = conn.execute(
            "SELECT access_token, refresh_token, expires_at FROM oauth_tokens WHERE name = 'g'"
        ).fetchone()
        return {"access_token": row[0], "refresh_token": row[1], "expires_at": row[2], "token_type": "Bearer"}

    def update_token(token: dict[str, Any], refresh_token: str | None = None, access_token: str | None = None) -> None:
        row = (token["access_token"], token.get("refresh_token"), token["expires_at"], refresh_token)
        conn.execute("UPDATE oauth_tokens SET access_token = ?, refresh_token = ?, expires_at = ? "
                     "WHERE name = 'g' AND refresh_token = ?", row)  # fmt: skip

    for i in range(ITERATIONS):
        session = OAuth2Session(sim["client_id"], sim["client_secret"], token=load(), update_token=update_token,
                                token_endpoint=sim["token_url"])  # fmt: skip
        if i == 0:
            barrier.wait()  # every worker has loaded the token before any of them uses it
        try:
            counts[f"status:{session.get(sim['resource'], timeout=10).status_code}"] += 1
        except OAuthError as exc:
            counts[f"error:{exc.error}"] += 1
        session.close()
    conn.close()
    queue.put(dict(counts))


def bridge_worker(store_url: str, sim: dict[str, str], barrier: Any, queue: Any) -> None:
    """The same app through the bridge: the same session calls, a keeper instead of token= / update_token=."""
    counts: Counter[str] = Counter()
    with Keeper.open(store_url, policy=FAST_POLICY) as keeper:
        for i in range(ITERATIONS):
            session = KeeperOAuth2Session(keeper, "g", client_id=sim["client_id"], token_endpoint=sim["token_url"])
            if i == 0:
                barrier.wait()
            try:
                counts[f"status:{session.get(sim['resource'], timeout=10).status_code}"] += 1
            except GrantkeeperError as exc:
                counts[f"error:{exc.code}"] += 1
            session.close()
    queue.put(dict(counts))


def _run(target: Callable[..., None], first: str, sim: object) -> Counter[str]:
    info = {"client_id": sim.client_id, "client_secret": sim.client_secret, "token_url": sim.url,  # type: ignore[attr-defined]
            "resource": resource(sim)}  # fmt: skip
    return run_counting(WORKERS, target, first, info, SPAWN.Barrier(WORKERS))


@pytest.mark.slow
def test_processes_plain_authlib_loses_the_grant_the_bridge_does_not(
    shared_store_url: str, make_sim: Sim, tmp_path: Path
) -> None:
    """4 processes x 5 requests on one grant; rotation always, reuse detection, grace 0; the first requests
    of all workers start together with an expired token. Plain Authlib: every worker spends the same refresh
    token, the provider sees reuse and revokes the grant (>= 1 invalid_grant). Bridge: zero invalid_grant,
    every request succeeds, one provider call per committed generation."""
    plain_sim = make_sim(rotation="always", reuse_grace=0.0, reuse_detection=True)
    db = tmp_path / "authlib-tokens.db"
    _expired_seed(db, str(plain_sim.issue_grant()))  # type: ignore[attr-defined]
    plain = _run(plain_authlib_worker, str(db), plain_sim)

    bridge_sim = make_sim(rotation="always", reuse_grace=0.0, reuse_detection=True)
    with Keeper.open(shared_store_url) as setup:
        add_grant(setup, bridge_sim)
    bridged = _run(bridge_worker, shared_store_url, bridge_sim)
    with Keeper.open(shared_store_url) as check:
        generations = check.store.get_grant("g").generation - 1

    plain_invalid_grant = stats(plain_sim).errors.get("invalid_grant", 0)
    bridge_invalid_grant = stats(bridge_sim).errors.get("invalid_grant", 0)
    print(f"invalid_grant: plain Authlib {plain_invalid_grant} ({dict(plain)}), bridge {bridge_invalid_grant}")
    assert plain_invalid_grant >= 1 and plain["error:invalid_grant"] >= 1
    assert bridge_invalid_grant == 0
    assert bridged == Counter({"status:200": WORKERS * ITERATIONS})
    assert stats(bridge_sim).refresh_calls == generations >= 1


@pytest.mark.anyio
async def test_tasks_plain_async_client_per_request_loses_the_grant_the_bridge_does_not(
    sqlite_url: str, make_sim: Sim
) -> None:
    """20 asyncio tasks, each with its own client (authlib#673: Authlib's refresh lock is per client object).
    Plain AsyncOAuth2Client with update_token: >= 1 invalid_grant. Bridge: zero, one refresh."""
    tasks = 20
    plain_sim = make_sim(rotation="always", reuse_grace=0.0, reuse_detection=True)
    bridge_sim = make_sim(rotation="always", reuse_grace=0.0, reuse_detection=True)
    saved = {"access_token": "expired", "refresh_token": str(plain_sim.issue_grant()),  # type: ignore[attr-defined]
             "expires_at": int(time.time()) - 60, "token_type": "Bearer"}  # fmt: skip

    async def update_token(token: dict[str, Any], refresh_token: str | None = None, **_: Any) -> None:
        if saved["refresh_token"] == refresh_token:
            saved.update(token)

    async def plain_request() -> str:
        async with AsyncOAuth2Client(plain_sim.client_id, plain_sim.client_secret, token=dict(saved),  # type: ignore[attr-defined]
                                     update_token=update_token, token_endpoint=plain_sim.url) as client:  # type: ignore[attr-defined]  # fmt: skip
            try:
                return str((await client.get(resource(plain_sim))).status_code)
            except OAuthError as exc:
                return str(exc.error)

    async def bridged_request(keeper: AsyncKeeper) -> str:
        async with KeeperAsyncOAuth2Client(keeper, "g", token_endpoint=bridge_sim.url) as client:  # type: ignore[attr-defined]
            return str((await client.get(resource(bridge_sim))).status_code)

    plain = await asyncio.gather(*(plain_request() for _ in range(tasks)))
    async with await AsyncKeeper.open(sqlite_url, policy=FAST_POLICY) as keeper:
        await add_grant_to(keeper, bridge_sim)
        bridged = await asyncio.gather(*(bridged_request(keeper) for _ in range(tasks)))
    assert stats(plain_sim).errors.get("invalid_grant", 0) >= 1 and "invalid_grant" in plain
    assert stats(bridge_sim).errors.get("invalid_grant", 0) == 0
    assert bridged == ["200"] * tasks and stats(bridge_sim).refresh_calls == 1
