"""The API against the provider simulator, through a real `grantkeeper serve` process and real HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable

from grantkeeper import Keeper
from tests.helpers import resource_ok
from tests.serve.conftest import ServeProcess, make_key

Start = Callable[..., ServeProcess]


def test_token_is_served_with_its_metadata_and_works_at_the_resource(grant_on_sim: tuple[str, object],
                                                                     serve_process: Start) -> None:  # fmt: skip
    store_url, sim = grant_on_sim
    key = make_key(store_url, "ci", grants="acme-*")
    server = serve_process(store_url)
    with server.client(key) as http:
        first = http.get("/v1/grants/acme-1/token")
        second = http.get("/v1/grants/acme-1/token")
    assert first.status_code == 200, first.text
    body = first.json()
    assert set(body) == {"access_token", "token_type", "expires_at", "generation", "fingerprint"}
    assert body["token_type"] == "Bearer" and body["generation"] == 2 and body["expires_at"] > time.time()
    assert first.headers["cache-control"] == "no-store"
    assert resource_ok(sim, body["access_token"])
    assert second.json() == body  # cached: one provider call for both
    assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]
    with Keeper.open(store_url) as keeper:
        assert keeper.store.fingerprint(body["access_token"]) == body["fingerprint"] == \
            keeper.status("acme-1").access_fp  # fmt: skip


def test_min_valid_refreshes_a_token_that_would_expire_too_soon(serve_store: str, make_sim: Callable[..., object],
                                                               serve_process: Start) -> None:  # fmt: skip
    from tests.helpers import setup_grant

    sim = make_sim(access_ttl=600.0)
    setup_grant(serve_store, sim, grant="acme-1", skew=0.0)
    key = make_key(serve_store, "ci")
    server = serve_process(serve_store)
    with server.client(key) as http:
        first = http.get("/v1/grants/acme-1/token").json()
        enough = http.get("/v1/grants/acme-1/token", params={"min_valid": 60}).json()
        assert enough["generation"] == first["generation"]  # about 600 s left: no refresh
        time.sleep(3.5)  # now at most 596.5 s left: a token valid 597 s needs a refresh
        more = http.get("/v1/grants/acme-1/token", params={"min_valid": 597}).json()
        assert more["generation"] == first["generation"] + 1
        impossible = http.get("/v1/grants/acme-1/token", params={"min_valid": 3600})
    assert impossible.status_code == 422
    assert impossible.json()["code"] == "min_valid_unsatisfiable"
    assert impossible.headers["content-type"] == "application/problem+json"


def test_refresh_rejected_status_doctor_history_and_list(grant_on_sim: tuple[str, object],
                                                         serve_process: Start) -> None:  # fmt: skip
    store_url, sim = grant_on_sim
    key = make_key(store_url, "ops", scopes="token,refresh,read")
    server = serve_process(store_url)
    with server.client(key) as http:
        token = http.get("/v1/grants/acme-1/token").json()
        refreshed = http.post("/v1/grants/acme-1/refresh")
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json()["generation"] == token["generation"] + 1 and refreshed.json()["refreshed"] is True
        assert "access_token" not in refreshed.json() and "refresh_token" not in refreshed.text
        current = http.get("/v1/grants/acme-1/token").json()
        assert current["generation"] == token["generation"] + 1 and current["access_token"] != token["access_token"]

        stale = http.post("/v1/grants/acme-1/rejected", json={"access_token": token["access_token"]})
        assert stale.json() == {"name": "acme-1", "invalidated": False}  # no longer the current one
        rejected = http.post("/v1/grants/acme-1/rejected", json={"access_token": current["access_token"]})
        assert rejected.json() == {"name": "acme-1", "invalidated": True}
        after = http.get("/v1/grants/acme-1/token").json()
        assert after["generation"] == token["generation"] + 2 and after["access_token"] != current["access_token"]

        status = http.get("/v1/grants/acme-1").json()
        assert (
            status["name"] == "acme-1"
            and status["generation"] == after["generation"]
            and status["access_fp"] == after["fingerprint"]
        )
        doctor = http.get("/v1/grants/acme-1/doctor").json()
        assert doctor["cause"] == "healthy"
        history = http.get("/v1/grants/acme-1/history", params={"limit": 2}).json()
        assert [a["new_generation"] for a in history] == [after["generation"], current["generation"]]
        listed = http.get("/v1/grants").json()
        assert [g["name"] for g in listed] == ["acme-1"] and listed[0]["state"] == "active"
        missing = http.get("/v1/grants/acme-2/token")
    assert missing.status_code == 404 and missing.json()["code"] == "unknown_grant"
    assert sim.stats.refresh_calls == 3  # type: ignore[attr-defined]


def test_livez_readyz_openapi(grant_on_sim: tuple[str, object], serve_process: Start) -> None:
    store_url, _ = grant_on_sim
    server = serve_process(store_url)
    with server.client() as http:
        assert http.get("/livez").json() == {"status": "ok"}
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        assert set(ready.json()["checks"]) == {"store", "key", "scheduler"}  # the refresh scheduler runs by default
        spec = http.get("/openapi.json").json()
    assert "/v1/grants/{name}/token" in spec["paths"]
