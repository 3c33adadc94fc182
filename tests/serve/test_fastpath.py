"""`FastPaths` answers ``GET /v1/grants/{name}/token`` and ``/v1/proxy/{name}/{path}`` exactly as the FastAPI routes do.

A query string sends the same request through FastAPI (it ignores an unknown parameter), so every case is asked
both ways of one server and the answers, their headers and the request log lines must be the same.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

import httpx
import pytest

from grantkeeper.keepers import AsyncKeeper
from grantkeeper.serve.app import create_app
from grantkeeper.serve.config import ServeConfig
from grantkeeper.serve.fastpath import FastPaths
from grantkeeper.serve.runner import build_broker
from grantkeeper.stores import open_store
from tests.serve.conftest import ServeProcess, make_key

Start = Callable[..., ServeProcess]


def _request_lines(process: ServeProcess, count: int) -> list[dict[str, object]]:
    """The last `count` request log lines, once the log reader has them."""
    deadline = time.monotonic() + 30
    while True:
        lines = [e for e in process.events() if e.get("event") == "request"]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines[-count:]
        time.sleep(0.05)


@pytest.fixture
def server(grant_on_sim: tuple[str, object], serve_process: Start) -> tuple[ServeProcess, dict[str, str | None]]:
    store_url, _ = grant_on_sim
    keys: dict[str, str | None] = {
        "good": make_key(store_url, "good", grants="acme-*", scopes="token"),
        "read-only": make_key(store_url, "read-only", grants="acme-*", scopes="read"),
        "elsewhere": make_key(store_url, "elsewhere", grants="billing", scopes="token"),
        "unknown": "gk_0123456789ab_" + "x" * 43,
        "malformed": "not-a-key",
        "none": None,
    }
    return serve_process(store_url, env={"GRANTKEEPER_SERVE_RATE": "0"}), keys


CASES = [("good", "acme-1"), ("good", "acme-2"), ("good", "x" * 201), ("read-only", "acme-1"),
         ("elsewhere", "acme-1"), ("unknown", "acme-1"), ("malformed", "acme-1"), ("none", "acme-1"),
         ("good", "acme%2F1")]  # fmt: skip


@pytest.mark.parametrize(("key", "grant"), CASES)
def test_the_fast_path_answers_as_the_route_does(server: tuple[ServeProcess, dict[str, str | None]], key: str,
                                                 grant: str) -> None:  # fmt: skip
    process, keys = server
    with process.client(keys[key]) as http:
        fast = http.get(f"/v1/grants/{grant}/token")
        routed = http.get(f"/v1/grants/{grant}/token?unused=1")
    assert fast.status_code == routed.status_code
    assert fast.content == routed.content
    assert {k: v for k, v in fast.headers.items() if k != "date"} == \
        {k: v for k, v in routed.headers.items() if k != "date"}  # fmt: skip
    lines = _request_lines(process, 2)
    same = ("route", "status", "api_key", "outcome", "method")
    assert [lines[0][k] for k in same] == [lines[1][k] for k in same]
    assert lines[0]["path"] == lines[1]["path"]


def test_the_token_route_is_answered_and_counted(server: tuple[ServeProcess, dict[str, str | None]]) -> None:
    process, keys = server
    with process.client(keys["good"]) as http:
        answer = http.get("/v1/grants/acme-1/token")
    assert answer.status_code == 200 and answer.json()["token_type"] == "Bearer"
    assert answer.headers["cache-control"] == "no-store"
    line = _request_lines(process, 1)[-1]
    assert line["route"] == "/v1/grants/{name}/token" and line["api_key"] == "good"


# --- the proxy route: the same app with and without the fast path, in process ------------------------------

PROXY_CASES = [("good", "GET", "acme-1/resource"), ("good", "POST", "acme-1/resource"),
               ("good", "HEAD", "acme-1/resource"), ("good", "GET", "acme-1/resource?x=1&y=%2F"),
               ("good", "GET", "acme-2/resource"), ("good", "GET", "acme-1/a/%2e%2e/b"), ("good", "GET", "acme-1//x"),
               ("good", "GET", "x" * 201 + "/resource"), ("good", "PROPFIND", "acme-1/resource"),
               ("token-only", "GET", "acme-1/resource"), ("elsewhere", "GET", "acme-1/resource"),
               ("unknown", "GET", "acme-1/resource"), ("none", "GET", "acme-1/resource")]  # fmt: skip


@pytest.fixture
def proxy_keys(grant_on_sim: tuple[str, object]) -> tuple[str, dict[str, str | None]]:
    store_url, sim = grant_on_sim
    store = open_store(store_url)
    try:
        provider = store.get_provider("sim")
        store.put_provider(dataclasses.replace(provider, api_base_url=sim.base_url), now=0.0)  # type: ignore[attr-defined]
    finally:
        store.close()
    keys: dict[str, str | None] = {
        "good": make_key(store_url, "good", grants="acme-*", scopes="proxy"),
        "token-only": make_key(store_url, "token-only", grants="acme-*", scopes="token"),
        "elsewhere": make_key(store_url, "elsewhere", grants="billing", scopes="proxy"),
        "unknown": "gk_0123456789ab_" + "x" * 43,
        "none": None,
    }
    return store_url, keys


async def _ask_both(store_url: str, keys: dict[str, str | None]) -> list[tuple[object, object]]:
    """Every `PROXY_CASES` request to the app as `create_app` makes it and to the same app without `FastPaths`:
    (status, body, headers, audit entry) of each, side by side."""
    keeper = await AsyncKeeper.open(store_url, create=False, threads=True)
    broker = build_broker(keeper, ServeConfig(rate=0), store_url=store_url)
    fast, routed = create_app(broker), create_app(broker)
    routed.user_middleware = [m for m in routed.user_middleware if m.cls is not FastPaths]
    pairs = []
    try:
        for key, method, path in PROXY_CASES:
            headers = {"Authorization": f"Bearer {keys[key]}"} if keys[key] else {}
            seen = []
            for app in (fast, routed):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
                    answer = await http.request(method, "/v1/proxy/" + path, headers=headers,
                                                content=b"body" if method == "POST" else None)  # fmt: skip
                await broker.audit.flush()
                entry = next(iter(await asyncio.to_thread(broker.store.list_audit, limit=1)), None)
                seen.append((answer.status_code, answer.content,
                             sorted((k, v) for k, v in answer.headers.items() if k != "date"),
                             None if entry is None else dataclasses.replace(entry, id=0, at=0.0)))  # fmt: skip
            pairs.append((seen[0], seen[1]))
    finally:
        await fast.state.proxy_clients.aclose()
        await routed.state.proxy_clients.aclose()
        await keeper.aclose()
    return pairs


def test_the_proxy_fast_path_answers_as_the_route_does(proxy_keys: tuple[str, dict[str, str | None]]) -> None:
    pairs = asyncio.run(_ask_both(*proxy_keys))
    for (key, method, path), (fast, routed) in zip(PROXY_CASES, pairs, strict=True):
        assert fast == routed, (key, method, path)
    statuses = [fast[0] for fast, _ in pairs]
    # 501: the simulator implements no HEAD, and its answer is passed on as it is.
    assert statuses == [200, 200, 501, 200, 404, 400, 400, 422, 405, 403, 403, 401, 401]
