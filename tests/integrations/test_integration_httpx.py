"""httpx bridge: GrantAuth attaches the grant's token, and a rejected token is invalidated and retried once.

The resource server is the simulator's ``/resource``. Its clock is a FakeClock the test moves, so an access
token the keeper (on real time) still trusts can be expired at the resource server: a real 401
``invalid_token`` for a token the client believed valid.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from grantkeeper import AsyncKeeper, ConfigurationError, Keeper, Secret
from grantkeeper.integrations import OUTCOME_KEY, AuthOutcome
from grantkeeper.integrations.httpx_auth import GrantAuth
from grantkeeper.testing.clock import FakeClock
from tests.helpers import FAST_POLICY, add_grant, provider_for
from tests.integration_support import EXPIRE_ALL, Sim, keeper, refresh_calls, resource


class Counter:
    """Counts requests that reach the wire (httpx calls request hooks once per request an auth flow sends)."""

    def __init__(self) -> None:
        self.sent = 0
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> None:
        with self._lock:
            self.sent += 1


pytest_plugins = ["tests.integration_fixtures"]  # the clock and sim fixtures
__all__ = ["keeper"]  # the fixture, from tests/integration_support.py


def test_attaches_the_grant_token(keeper: Keeper, sim: object) -> None:
    """A request goes out with the grant's current access token; an accepted one is sent once, no retry."""
    counter = Counter()
    with httpx.Client(auth=GrantAuth(keeper, "g"), event_hooks={"request": [counter]}) as client:
        response = client.get(resource(sim))
    assert response.status_code == 200
    assert response.request.headers["Authorization"] == f"Bearer {keeper.access_token('g')}"
    assert response.extensions[OUTCOME_KEY] is AuthOutcome.SENT
    assert counter.sent == 1 and refresh_calls(sim) == 1


def test_401_invalid_token_is_invalidated_and_retried_once(keeper: Keeper, sim: object, clock: FakeClock) -> None:
    """A token the resource server calls invalid_token is invalidated in the store, one refresh runs, and the
    request is re-sent once with the new token."""
    rejected = keeper.access_token("g")
    generation = keeper.store.get_grant("g").generation
    clock.advance(EXPIRE_ALL)
    counter = Counter()
    with httpx.Client(auth=GrantAuth(keeper, "g"), event_hooks={"request": [counter]}) as client:
        response = client.get(resource(sim))
    assert response.status_code == 200
    assert response.extensions[OUTCOME_KEY] is AuthOutcome.RETRIED
    assert [r.status_code for r in response.history] == [401]
    assert counter.sent == 2 and refresh_calls(sim) == 2
    grant = keeper.store.get_grant("g")
    assert grant.generation == generation + 1
    assert response.request.headers["Authorization"] == f"Bearer {keeper.access_token('g')}" != f"Bearer {rejected}"


def test_second_rejection_is_final(keeper: Keeper, sim: object, make_sim: Sim) -> None:
    """A resource server that rejects every token gets the request twice, never more; one refresh in between."""
    stranger = make_sim()  # its /resource knows none of the keeper's tokens: always 401 invalid_token
    keeper.access_token("g")
    counter = Counter()
    with httpx.Client(auth=GrantAuth(keeper, "g"), event_hooks={"request": [counter]}) as client:
        response = client.get(resource(stranger))
    assert response.status_code == 401
    assert response.extensions[OUTCOME_KEY] is AuthOutcome.REJECTED_AGAIN
    assert counter.sent == 2
    assert refresh_calls(sim) == 2


def test_a_401_without_invalid_token_is_not_retried_unless_configured(keeper: Keeper) -> None:
    """Only invalid_token means "get a new token" (RFC 6750 §3.1); `any_401=True` is for APIs without challenges.
    (MockTransport: the wiring of a challenge-less 401, which the simulator never sends for a bearer token.)"""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="api"'})

    with httpx.Client(auth=GrantAuth(keeper, "g"), transport=httpx.MockTransport(handler)) as client:
        plain = client.get("http://api.invalid/x")
    with httpx.Client(auth=GrantAuth(keeper, "g", any_401=True), transport=httpx.MockTransport(handler)) as client:
        configured = client.get("http://api.invalid/x")
    assert plain.extensions[OUTCOME_KEY] is AuthOutcome.SENT
    assert configured.extensions[OUTCOME_KEY] is AuthOutcome.REJECTED_AGAIN
    assert len(seen) == 3 and seen[1] != seen[2]  # one try, then a try and a retry with a fresh token


def test_non_replayable_body_is_not_retried(
    keeper: Keeper, sim: object, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A streamed upload rejected with 401 comes back as is (no silent re-send of a consumed stream), marked
    and logged; the token is still reported, so the next request gets a fresh one."""
    keeper.access_token("g")
    clock.advance(EXPIRE_ALL)
    chunks = [b"a" * 1000, b"b" * 1000]

    def body() -> Iterator[bytes]:
        yield from chunks

    counter = Counter()
    with (
        caplog.at_level(logging.INFO, logger="grantkeeper"),
        httpx.Client(auth=GrantAuth(keeper, "g"), event_hooks={"request": [counter]}) as client,
    ):
        response = client.post(resource(sim), content=body(), headers={"Content-Length": "2000"})
        assert response.status_code == 401
        assert response.extensions[OUTCOME_KEY] is AuthOutcome.NOT_REPLAYABLE
        assert counter.sent == 1
        assert "NOT re-sent" in caplog.text
        assert refresh_calls(sim) == 1  # reported, not yet refreshed
        assert client.post(resource(sim), content=b"x" * 10).status_code == 200
    assert refresh_calls(sim) == 2


def test_a_late_401_for_a_superseded_token_does_not_invalidate_its_successor(keeper: Keeper, sim: object) -> None:
    """report_rejected invalidates only while the rejected token is the stored one: once the generation moved
    on, a 401 for the old token changes nothing and costs no refresh."""
    old = keeper.access_token("g")
    keeper.refresh("g", force=True)
    new = keeper.access_token("g")
    calls = refresh_calls(sim)
    assert keeper.report_rejected("g", old) is False
    assert keeper.store.get_grant("g").access_fp == keeper.store.fingerprint(Secret(new))
    assert keeper.access_token("g") == new and refresh_calls(sim) == calls


@pytest.mark.anyio
async def test_50_tasks_rejected_at_once_cause_one_refresh(store_url: str, sim: object, clock: FakeClock) -> None:
    """50 asyncio tasks whose shared token is rejected at once: one provider refresh, all succeed on retry."""

    async with await AsyncKeeper.open(store_url, policy=FAST_POLICY) as keeper:
        await add_async_grant(keeper, sim)
        await keeper.access_token("g")
        clock.advance(EXPIRE_ALL)
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(auth=GrantAuth(keeper, "g"), limits=limits) as client:
            responses = await asyncio.gather(*(client.get(resource(sim)) for _ in range(50)))

    assert [r.status_code for r in responses] == [200] * 50
    assert refresh_calls(sim) == 2  # the first token, then exactly one refresh for all 50 rejections
    assert any(r.extensions[OUTCOME_KEY] is AuthOutcome.RETRIED for r in responses)
    assert len({r.request.headers["Authorization"] for r in responses}) == 1


async def add_async_grant(keeper: AsyncKeeper, sim: object) -> None:
    await keeper.add_provider(provider_for(sim))
    await keeper.import_grant("g", provider="sim", refresh_token=str(sim.issue_grant()))  # type: ignore[attr-defined]


def test_keepers_in_separate_workers_share_one_refresh_after_401s(
    shared_store_url: str, sim: object, clock: FakeClock
) -> None:
    """Two keepers (separate caches, one store) whose threads all get 401 for the same token: one refresh."""
    keepers = [Keeper.open(shared_store_url, policy=FAST_POLICY) for _ in range(2)]
    try:
        add_grant(keepers[0], sim)
        assert keepers[0].access_token("g") == keepers[1].access_token("g")
        clock.advance(EXPIRE_ALL)
        barrier = threading.Barrier(8)
        statuses: list[int] = []

        def worker(keeper: Keeper) -> None:
            with httpx.Client(auth=GrantAuth(keeper, "g")) as client:
                barrier.wait()
                statuses.append(client.get(resource(sim)).status_code)

        threads = [threading.Thread(target=worker, args=(k,)) for k in keepers for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for k in keepers:
            k.close()
    assert statuses == [200] * 8
    assert refresh_calls(sim) == 2


@pytest.mark.anyio
async def test_async_client_retries_with_the_async_driver(store_url: str, sim: object, clock: FakeClock) -> None:
    """The async driver runs the same flow: an async-generator upload rejected with 401 is not re-sent (but
    its token is reported, so the next request gets a fresh one); a rejected GET is re-sent once."""

    async def upload() -> AsyncIterator[bytes]:
        yield b"z" * 100

    async with await AsyncKeeper.open(store_url, policy=FAST_POLICY) as keeper:
        await add_async_grant(keeper, sim)
        await keeper.access_token("g")
        clock.advance(EXPIRE_ALL)
        async with httpx.AsyncClient(auth=GrantAuth(keeper, "g")) as client:
            streamed = await client.post(resource(sim), content=upload(), headers={"Content-Length": "100"})
            after_report = await client.get(resource(sim))
            clock.advance(EXPIRE_ALL)
            retried = await client.get(resource(sim))

    assert streamed.status_code == 401 and streamed.extensions[OUTCOME_KEY] is AuthOutcome.NOT_REPLAYABLE
    assert after_report.status_code == 200 and after_report.extensions[OUTCOME_KEY] is AuthOutcome.SENT
    assert retried.status_code == 200 and retried.extensions[OUTCOME_KEY] is AuthOutcome.RETRIED
    assert refresh_calls(sim) == 3


def test_async_second_rejection_is_final(store_url: str, sim: object, make_sim: Sim) -> None:
    """The async face ends a twice-rejected request like the sync one: sent twice, one refresh in between, the
    401 returned with REJECTED_AGAIN."""
    stranger = make_sim()  # its /resource knows none of the keeper's tokens: always 401 invalid_token
    counter = Counter()

    async def count(request: httpx.Request) -> None:
        counter(request)

    async def main() -> httpx.Response:
        async with await AsyncKeeper.open(store_url, policy=FAST_POLICY) as keeper:
            await add_async_grant(keeper, sim)
            async with httpx.AsyncClient(auth=GrantAuth(keeper, "g"), event_hooks={"request": [count]}) as client:
                return await client.get(resource(stranger))

    response = asyncio.run(main())
    assert response.status_code == 401 and response.extensions[OUTCOME_KEY] is AuthOutcome.REJECTED_AGAIN
    assert [r.status_code for r in response.history] == [401]
    assert counter.sent == 2 and refresh_calls(sim) == 2


def test_the_keeper_must_match_the_client(keeper: Keeper, store_url: str, sim: object) -> None:
    """A sync keeper cannot serve an AsyncClient (its refresh would block the event loop), nor an AsyncKeeper a
    Client (its calls are coroutines): a clear error at the first request, naming the keeper the client needs."""

    async def main() -> None:
        async with httpx.AsyncClient(auth=GrantAuth(keeper, "g")) as client:
            await client.get(resource(sim))

    with pytest.raises(ConfigurationError, match="AsyncKeeper"):
        asyncio.run(main())

    async def sync_client_with_an_async_keeper() -> None:
        async with await AsyncKeeper.open(store_url, policy=FAST_POLICY) as async_keeper:
            with httpx.Client(auth=GrantAuth(async_keeper, "g")) as client:
                client.get(resource(sim))

    with pytest.raises(ConfigurationError, match="needs a grantkeeper Keeper"):
        asyncio.run(sync_client_with_an_async_keeper())
    assert refresh_calls(sim) == 0  # neither request reached the keeper


def test_no_token_in_logs_or_reprs(
    keeper: Keeper, sim: object, clock: FakeClock, make_sim: Sim, caplog: pytest.LogCaptureFixture
) -> None:
    """Retries, final rejections and reprs log names and outcomes, never a token (I6)."""
    auth = GrantAuth(keeper, "g")
    keeper.access_token("g")
    clock.advance(EXPIRE_ALL)
    with caplog.at_level(logging.DEBUG), httpx.Client(auth=auth) as client:
        client.get(resource(sim))
        client.get(resource(make_sim()))
    text = caplog.text + repr(auth)
    assert "rejected the access token" in text
    issued = sim.issued_tokens()  # type: ignore[attr-defined]
    assert issued and not [t for t in issued if t in text]
