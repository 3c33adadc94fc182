"""Two `serve` instances on one PostgreSQL store; one is SIGKILLed mid-refresh and the other keeps serving."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from grantkeeper import Keeper
from grantkeeper.stores import open_store
from tests.conftest import TEST_KEY
from tests.helpers import add_grant, resource_ok
from tests.serve.conftest import ServeProcess, make_key

Start = Callable[..., ServeProcess]

pytestmark = pytest.mark.slow
CLIENTS = 20


def test_an_instance_killed_mid_refresh_loses_nothing(pg_url: str, make_sim: Callable[..., object],
                                                      serve_process: Start, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("GRANTKEEPER_KEY", TEST_KEY)
    open_store(pg_url, migrate=True).close()
    sim = make_sim(reuse_grace=60.0)
    with Keeper.open(pg_url) as keeper:
        add_grant(keeper, sim, grant="acme-1", grace=60.0)
    key = make_key(pg_url, "fleet")
    env = {"GRANTKEEPER_SERVE_RATE": "0"}
    # Two hosts: each instance has its own local recovery storage. A dies once the provider has answered its
    # refresh (rotated) and before it commits.
    doomed = serve_process(pg_url, env={**env, "GRANTKEEPER_RECOVERY_DIR": str(tmp_path / "a"),
                                        "GRANTKEEPER_FAILPOINTS": "after_send=kill"})  # fmt: skip
    survivor = serve_process(pg_url, env={**env, "GRANTKEEPER_RECOVERY_DIR": str(tmp_path / "b")})

    def ask_doomed() -> None:
        with doomed.client(key) as http, pytest.raises(httpx.TransportError):
            http.get("/v1/grants/acme-1/token")

    killer = threading.Thread(target=ask_doomed)
    killer.start()
    while sim.stats.refresh_calls == 0 and doomed.proc.poll() is None:  # type: ignore[attr-defined]
        threading.Event().wait(0.01)  # A's refresh is at the provider: B's clients arrive mid-run
    answers: list[httpx.Response] = []

    def ask_survivor() -> None:
        with survivor.client(key) as http:
            answers.append(http.get("/v1/grants/acme-1/token"))

    clients = [threading.Thread(target=ask_survivor) for _ in range(CLIENTS)]
    for client in clients:
        client.start()
    for thread in [killer, *clients]:
        thread.join(120)
    assert doomed.proc.wait(60) == -9  # SIGKILLed at the failpoint
    assert [a.status_code for a in answers] == [200] * CLIENTS, [a.text for a in answers if a.status_code != 200]
    tokens = {a.json()["access_token"] for a in answers}
    assert len(tokens) == 1 and resource_ok(sim, tokens.pop())
    with survivor.client(key) as http:
        doctor = http.get("/v1/grants/acme-1/doctor").json()
        history = http.get("/v1/grants/acme-1/history").json()
    assert doctor["state"] == "active"
    assert sim.stats.errors.get("invalid_grant", 0) == 0  # type: ignore[attr-defined]
    # B re-sent A's spent token within the grace window and committed the successor A never stored.
    # Its access token was not served on trust: one more refresh with the successor got the one handed out.
    resends = [a for a in history if a["outcome_class"] == "committed" and a["resend_of"] is not None]
    assert len(resends) == 1 and history[0]["outcome_class"] == "committed" and history[0]["resend_of"] is None
