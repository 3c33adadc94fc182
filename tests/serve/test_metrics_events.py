"""Metrics fed by the keeper's and the store's hooks: webhook deliveries, needs-a-person events, lease waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from grantkeeper import Keeper
from grantkeeper.testing import Delay
from tests.serve.conftest import Hooks, ServeProcess, make_key, metric_sample

Start = Callable[..., ServeProcess]


def _metrics_until(http: httpx.Client, ready: Callable[[str], bool]) -> str:
    deadline = time.monotonic() + 30
    while True:
        text = http.get("/metrics").text
        if ready(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def test_a_dead_grant_is_an_event_a_webhook_delivery_and_a_refresh_outcome(
    grant_on_sim: tuple[str, object], serve_process: Start, receiver: Hooks
) -> None:
    store_url, sim = grant_on_sim
    url, received = receiver.url, receiver.bodies
    with Keeper.open(store_url) as keeper:
        refresh = keeper.store.get_grant("acme-1").refresh_token
    assert refresh is not None
    sim.revoke_family(refresh.reveal())  # type: ignore[attr-defined]
    key = make_key(store_url, "ops", scopes="token,metrics")
    server = serve_process(store_url, env={"GRANTKEEPER_WEBHOOK_URL": url, "GRANTKEEPER_WEBHOOK_SECRET": "s3cret"})
    with server.client(key) as http:
        assert http.get("/v1/grants/acme-1/token").status_code == 409
        text = _metrics_until(http, lambda t: 'grantkeeper_webhook_deliveries_total{outcome="delivered"} 1.0' in t)
    assert len(received) == 1 and b"needs_reauth" in received[0]
    assert metric_sample(text, "grantkeeper_webhook_deliveries_total", outcome="delivered") == 1
    assert metric_sample(text, "grantkeeper_grant_events_total", kind="needs_reauth", cause="revoked_or_expired") == 1
    assert metric_sample(text, "grantkeeper_refreshes_total", provider="sim", outcome="revoked_or_expired") == 1
    assert metric_sample(text, "grantkeeper_token_requests_total", outcome="revoked_or_expired") == 1
    assert metric_sample(text, "grantkeeper_grants", state="needs_reauth") == 1


def test_an_instance_waiting_on_anothers_refresh_counts_a_lease_wait(grant_on_sim: tuple[str, object],
                                                                     serve_process: Start) -> None:  # fmt: skip
    store_url, sim = grant_on_sim
    sim.inject(Delay(2.0))  # type: ignore[attr-defined]
    key = make_key(store_url, "ops", scopes="token,metrics")
    first, second = serve_process(store_url), serve_process(store_url)
    answers: dict[str, httpx.Response] = {}

    def ask(name: str, server: ServeProcess) -> None:
        with server.client(key) as http:
            answers[name] = http.get("/v1/grants/acme-1/token")

    holder = threading.Thread(target=ask, args=("first", first))
    holder.start()
    while sim.stats.refresh_calls == 0:  # type: ignore[attr-defined]
        time.sleep(0.01)  # the first instance holds the lease and is at the provider
    ask("second", second)
    holder.join(60)
    assert answers["first"].json()["access_token"] == answers["second"].json()["access_token"]
    assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]
    with second.client(key) as http:
        text = http.get("/metrics").text
    assert metric_sample(text, "grantkeeper_lease_waits_total", provider="sim") >= 1
    assert "grantkeeper_refreshes_total{" not in text  # the second instance refreshed nothing itself


def test_a_successor_committed_from_recovery_storage_is_counted(
    tmp_path: Path, make_sim: Callable[..., object]
) -> None:
    """The store is write-locked at commit: the successor goes to recovery storage and is committed when the lock
    goes; the store's observer tells the metrics."""
    from grantkeeper.serve.metrics import ServeMetrics
    from grantkeeper.stores import SQLiteStore
    from tests.engine.test_recovery import _lock_at_commit, _unlock
    from tests.helpers import FAST_POLICY, add_grant

    sim = make_sim()
    store = SQLiteStore.open(tmp_path / "s.db", busy_timeout=0.2)
    metrics = ServeMetrics(store)
    keeper = Keeper(store, policy=FAST_POLICY)
    add_grant(keeper, sim)
    held = _lock_at_commit(tmp_path / "s.db")
    try:
        keeper.access_token("g")  # served from the response; its successor waits in recovery storage
    finally:
        _unlock(held)
    deadline = time.monotonic() + 30
    while store.get_grant("g").generation < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # the keeper's background replay commits it
    keeper.close()
    text = metrics.render().decode()
    assert metric_sample(text, "grantkeeper_recovery_commits_total") == 1
