"""200 concurrent clients on one grant through `serve`: one provider refresh per expiry, no invalid_grant."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.helpers import resource_ok, setup_grant
from tests.serve.conftest import ServeProcess, make_key

Start = Callable[..., ServeProcess]
CLIENTS = 200
ROUNDS = 3


async def _burst(url: str, key: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120,
                                 limits=limits, trust_env=False) as http:  # fmt: skip
        return list(await asyncio.gather(*(http.get("/v1/grants/acme-1/token") for _ in range(CLIENTS))))


def test_200_clients_at_each_expiry_cause_one_refresh(serve_store: str, make_sim: Callable[..., object],
                                                      serve_process: Start, tmp_path: Path) -> None:  # fmt: skip
    """The callers' own path: the refresh scheduler, which would refresh ahead of them, is off here."""
    sim = make_sim(access_ttl=6.0)
    setup_grant(serve_store, sim, grant="acme-1", skew=0.0)
    key = make_key(serve_store, "fleet")
    config = tmp_path / "grantkeeper.toml"
    config.write_text("[scheduler]\nenabled = false\n")
    server = serve_process(serve_store, "--config", str(config),
                           env={"GRANTKEEPER_SERVE_RATE": "0"})  # one key for all: no rate limit  # fmt: skip
    seen: set[int] = set()
    for _ in range(ROUNDS):
        answers = asyncio.run(_burst(server.url, key))
        assert [a.status_code for a in answers] == [200] * CLIENTS, {a.status_code for a in answers}
        bodies = [a.json() for a in answers]
        seen |= {b["generation"] for b in bodies}
        latest = max(bodies, key=lambda b: b["generation"])
        # Normally all 200 share one token; a burst slower than the token's life legitimately sees a second one.
        time.sleep(max(0.0, latest["expires_at"] - time.time()) + 0.2)  # let it expire before the next burst
    stats = sim.stats  # type: ignore[attr-defined]
    assert len(seen) >= ROUNDS
    # Every provider call became exactly one generation that clients were served: one refresh per expiry, none
    # wasted or duplicated by concurrent callers, and no refresh token spent twice.
    assert stats.refresh_calls == max(seen) - min(seen) + 1 == len(seen)
    assert stats.errors.get("invalid_grant", 0) == 0
    with server.client(key) as http:
        assert resource_ok(sim, http.get("/v1/grants/acme-1/token").json()["access_token"])
