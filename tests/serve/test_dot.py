"""The API against django-oauth-toolkit, an independent authorization server (tests/dot_server.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from grantkeeper import Keeper
from tests.dot_browser import authorize
from tests.dot_server import DotFactory
from tests.serve.conftest import ServeProcess, make_key

Start = Callable[..., ServeProcess]

pytestmark = pytest.mark.slow


def test_the_api_against_dot(serve_store: str, dot_server: DotFactory, serve_process: Start) -> None:
    server = dot_server()  # rotating refresh tokens
    authorized = authorize(server)
    with Keeper.open(serve_store) as keeper:
        keeper.add_provider(server.provider())
        keeper.import_grant("dot-1", provider="dot", refresh_token=authorized.refresh_token,
                            scopes=tuple(authorized.scope.split()))  # fmt: skip
    key = make_key(serve_store, "ci", grants="dot-*", scopes="token,refresh,read")
    broker = serve_process(serve_store)
    with broker.client(key) as http:
        first = http.get("/v1/grants/dot-1/token").json()
        assert server.resource_status(first["access_token"])[0] == 200
        forced = http.post("/v1/grants/dot-1/refresh").json()
        assert forced["generation"] == first["generation"] + 1
        second = http.get("/v1/grants/dot-1/token").json()
        assert second["access_token"] != first["access_token"]
        assert server.resource_status(second["access_token"])[0] == 200
        rejected = http.post("/v1/grants/dot-1/rejected", json={"access_token": second["access_token"]}).json()
        assert rejected["invalidated"] is True
        third = http.get("/v1/grants/dot-1/token").json()
        assert third["generation"] == second["generation"] + 1
        assert server.resource_status(third["access_token"])[0] == 200
        history = http.get("/v1/grants/dot-1/history").json()
        assert [a["outcome_class"] for a in history] == ["committed"] * 3
        assert all(a["rotated"] for a in history)  # DOT rotated every time; each successor was kept
        assert http.get("/v1/grants/dot-1/doctor").json()["cause"] == "healthy"
        status = http.get("/v1/grants/dot-1").json()
        assert (status["generation"], status["access_fp"]) == (third["generation"], third["fingerprint"])
        assert [g["name"] for g in http.get("/v1/grants").json()] == ["dot-1"]
        # The original refresh token was spent and rotated away: DOT refuses it now, the broker never re-sent it.
    assert server.refresh_directly(authorized.refresh_token).status_code == 400
