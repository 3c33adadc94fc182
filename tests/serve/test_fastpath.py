"""`TokenFastPath` answers ``GET /v1/grants/{name}/token`` exactly as the FastAPI route does.

A query string sends the same request through FastAPI (it ignores an unknown parameter), so every case is asked
both ways of one server and the answers, their headers and the request log lines must be the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

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
