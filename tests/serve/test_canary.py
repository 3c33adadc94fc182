"""I6 for the broker: no token escapes through any route but the token route, any error, the audit trail,
/metrics, the JSON logs or the store file.

The provider is `CanarySimulator` (every token it issues is a canary); the scan is tests/system/test_canary.py's: every
canary and every 8-character fragment of one. The 200 answers of ``GET /v1/grants/{name}/token`` are the one
capture left out, as ``grantkeeper token``'s output is in the CLI suite: handing out the token is their job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from grantkeeper.stores import open_store
from grantkeeper.stores.access import AuditEntry
from tests.helpers import files_bytes, revoke_at_provider, setup_grant
from tests.serve.conftest import ServeProcess, make_key
from tests.system.test_canary import CanarySimulator, find_leaks

Start = Callable[..., ServeProcess]


@pytest.fixture
def canary_sim() -> Iterator[CanarySimulator]:
    sim = CanarySimulator()
    sim.start()
    yield sim
    sim.stop()


def test_no_canary_escapes_the_broker(tmp_path: Path, canary_sim: CanarySimulator, serve_process: Start) -> None:
    store_url = f"sqlite://{tmp_path}/serve.db"
    setup_grant(store_url, canary_sim, grant="acme-1")
    setup_grant(store_url, canary_sim, grant="billing")
    key = make_key(store_url, "all", grants="acme-*", scopes="token,refresh,read,metrics")
    server = serve_process(store_url, env={"GRANTKEEPER_SERVE_LOG_LEVEL": "debug"})
    captures: list[tuple[str, str]] = []
    tokens: list[str] = []

    def keep(label: str, response: httpx.Response) -> None:
        captures.append((f"{label}: {response.status_code} body", response.text))
        captures.append((f"{label}: headers", repr(response.headers)))

    with server.client(key) as http, server.client() as anonymous:
        for round_ in range(3):
            served = http.get("/v1/grants/acme-1/token")
            assert served.status_code == 200
            tokens.append(served.json()["access_token"])
            captures.append(("token route headers", repr(served.headers)))
            # The one token this answer may hold is its access token: never a refresh token, nor another.
            captures.append(("token route body without its access token", served.text.replace(tokens[-1], "")))
            keep(f"refresh {round_}", http.post("/v1/grants/acme-1/refresh"))
            keep(f"rejected {round_}", http.post("/v1/grants/acme-1/rejected", json={"access_token": tokens[-1]}))
        for path in ("/v1/grants", "/v1/grants/acme-1", "/v1/grants/acme-1/doctor", "/v1/grants/acme-1/history",
                     "/metrics", "/readyz", "/livez", "/openapi.json"):  # fmt: skip
            keep(path, http.get(path))
        # Errors, including callers that put a token where a key or a grant name goes.
        keep("other grant", http.get("/v1/grants/billing/token"))
        keep(
            "token as API key",
            anonymous.get("/v1/grants/acme-1/token", headers={"Authorization": f"Bearer {tokens[-1]}"}),
        )
        keep("token as grant name", http.get(f"/v1/grants/{tokens[-1]}/token"))
        keep("token in query", http.get("/v1/grants/acme-1/token", params={"min_valid": tokens[-1]}))
        keep("unknown grant", http.get("/v1/grants/acme-404/token"))
        keep("no key", anonymous.get("/v1/grants/acme-1"))
    # A revoked grant: 409 with the doctor's class.
    revoke_at_provider(store_url, "acme-1", canary_sim)
    with server.client(key) as http:
        keep("revoked", http.post("/v1/grants/acme-1/refresh"))
    assert server.terminate() == 0
    audit = _audit_trail(store_url)
    assert {e.action for e in audit} >= {"token", "refresh", "rejected"}
    captures.append(("audit trail", repr(audit)))
    captures.append(("serve log", server.log_text()))
    captures.append(("store files", files_bytes(tmp_path).decode("latin-1")))
    # The API key's secret part too (its id, gk_<id>_, is public: stored and shown by 'apikey list').
    canaries = set(canary_sim.issued_tokens()) | {canary_sim.client_secret} | {key.split("_", 2)[2]}
    assert set(tokens) <= canaries
    leaks = find_leaks(captures, canaries)
    assert not leaks, leaks
    assert sum(len(text) for _, text in captures) > 10_000  # the scan saw the captures, not nothing


def _audit_trail(store_url: str) -> list[AuditEntry]:
    store = open_store(store_url)
    try:
        return store.list_audit(limit=1000)
    finally:
        store.close()
