"""Events for grants that need a person: callbacks and a signed webhook, sent once on entering the state, with
evidence and never a token."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from grantkeeper import (
    ClientAuthFailed,
    ConfigurationError,
    GrantEvent,
    Keeper,
    NeedsReauth,
    RevokedOrExpired,
    Secret,
    Webhook,
)
from grantkeeper.cli.main import cli
from grantkeeper.notify import verify_signature
from tests.helpers import FAST_POLICY, add_grant, provider_for

Sim = Callable[..., object]
SECRET = "webhook-shared-secret-for-tests"


class Receiver:
    """A loopback webhook endpoint that answers the statuses it is told to, in order, then 200."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                with receiver.arrived:
                    receiver.requests.append((dict(self.headers.items()), body))
                    receiver.arrived.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/grantkeeper-credential-in-path"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 30) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.requests) >= count, timeout), self.requests


@pytest.fixture
def receiver() -> Iterator[Callable[[list[int]], Receiver]]:
    made: list[Receiver] = []

    def make(statuses: list[int]) -> Receiver:
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for r in made:
        r.server.shutdown()
        r.server.server_close()


def test_needs_reauth_calls_callbacks_once(tmp_path: Path, make_sim: Sim) -> None:
    """A revoked grant: the callback hears one needs_reauth event with the class and evidence; later calls that
    only repeat the verdict, from this keeper or another one on the same store, send nothing."""
    sim = make_sim()
    events: list[GrantEvent] = []
    url = f"sqlite://{tmp_path}/g.db"
    with Keeper.open(url, policy=FAST_POLICY, on_event=events.append) as keeper:
        refresh = add_grant(keeper, sim)
        sim.revoke_family(refresh)  # type: ignore[attr-defined]
        with pytest.raises(RevokedOrExpired):
            keeper.refresh("g", force=True)
        with pytest.raises(NeedsReauth):
            keeper.access_token("g")
    with Keeper.open(url, policy=FAST_POLICY, on_event=events.append) as other, pytest.raises(NeedsReauth):
        other.refresh("g", force=True)
    (event,) = events
    assert (event.kind, event.grant, event.provider, event.cause) == ("needs_reauth", "g", "sim", "revoked_or_expired")
    assert event.evidence["generation"] == 1 and str(event.evidence["fingerprint"]).startswith("fp_")
    assert refresh not in json.dumps(event.as_dict())


def test_client_auth_failure_is_announced_on_entering_only(tmp_path: Path, make_sim: Sim) -> None:
    """Two refreshes with a wrong client secret send one client_auth_failed event; after the secret is fixed
    and a refresh succeeds, the next failure is announced again."""
    sim = make_sim()
    events: list[GrantEvent] = []
    with Keeper.open(f"sqlite://{tmp_path}/g.db", policy=FAST_POLICY, on_event=events.append) as keeper:
        add_grant(keeper, sim)
        good = provider_for(sim)
        keeper.add_provider(replace(good, client_secret=Secret("not-the-secret")))
        for _ in range(2):
            with pytest.raises(ClientAuthFailed):
                keeper.refresh("g", force=True)
        assert [e.kind for e in events] == ["client_auth_failed"]
        keeper.add_provider(good)
        keeper.refresh("g", force=True)
        keeper.add_provider(replace(good, client_secret=Secret("not-the-secret")))
        with pytest.raises(ClientAuthFailed):
            keeper.refresh("g", force=True)
    assert [e.kind for e in events] == ["client_auth_failed", "client_auth_failed"]
    assert "not-the-secret" not in json.dumps([e.as_dict() for e in events])


def test_a_failing_callback_does_not_hide_the_grant_error(tmp_path: Path, make_sim: Sim,
                                                          caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    sim = make_sim()

    def broken(event: GrantEvent) -> None:
        raise RuntimeError("hook bug")

    with Keeper.open(f"sqlite://{tmp_path}/g.db", policy=FAST_POLICY, on_event=broken) as keeper:
        refresh = add_grant(keeper, sim)
        sim.revoke_family(refresh)  # type: ignore[attr-defined]
        with pytest.raises(RevokedOrExpired):
            keeper.refresh("g", force=True)
    assert "event hook" in caplog.text and "RuntimeError" in caplog.text


def test_webhook_is_signed_retried_and_tokenless(tmp_path: Path, make_sim: Sim,
                                                 receiver: Callable[[list[int]], Receiver]) -> None:  # fmt: skip
    """The receiver fails twice (500, 503), then accepts: three deliveries of the same event id, each signed
    over its timestamp and body; the JSON has grant, provider, class and evidence, and no token."""
    sim = make_sim()
    hook = receiver([500, 503])
    webhook = Webhook(hook.url, secret=SECRET, backoff=0.05)
    with Keeper.open(f"sqlite://{tmp_path}/g.db", policy=FAST_POLICY, on_event=webhook) as keeper:
        refresh = add_grant(keeper, sim)
        sim.revoke_family(refresh)  # type: ignore[attr-defined]
        with pytest.raises(RevokedOrExpired):
            keeper.refresh("g", force=True)
    # Closing the keeper flushed the queue: all three deliveries happened before close returned.
    assert len(hook.requests) == 3 and webhook.delivered == 1 and webhook.undelivered == 0
    ids = {headers["Grantkeeper-Delivery"] for headers, _ in hook.requests}
    assert len(ids) == 1
    for headers, body in hook.requests:
        assert headers["Grantkeeper-Event"] == "needs_reauth"
        assert verify_signature(Secret(SECRET), body, headers["Grantkeeper-Signature"], now=time.time())
        assert not verify_signature(Secret("another secret"), body, headers["Grantkeeper-Signature"], now=time.time())
        assert not verify_signature(Secret(SECRET), body + b" ", headers["Grantkeeper-Signature"], now=time.time())
    payload = json.loads(hook.requests[-1][1])
    assert {k: payload[k] for k in ("kind", "grant", "provider", "cause")} == {
        "kind": "needs_reauth", "grant": "g", "provider": "sim", "cause": "revoked_or_expired"}  # fmt: skip
    assert payload["evidence"]["fingerprint"].startswith("fp_")
    everything = b"".join(body for _, body in hook.requests).decode()
    for token in sim.issued_tokens():  # type: ignore[attr-defined]
        assert token not in everything
    assert SECRET not in everything


def test_webhook_gives_up_after_max_tries(receiver: Callable[[list[int]], Receiver],
                                          caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    hook = receiver([500] * 10)
    webhook = Webhook(hook.url, secret=SECRET, max_tries=3, backoff=0.01)
    webhook(GrantEvent(kind="needs_reauth", grant="g", provider="p", cause="revoked_or_expired", message="m",
                       evidence={}, at=time.time(), worker="w"))  # fmt: skip
    webhook.close()
    assert len(hook.requests) == 3 and webhook.undelivered == 1
    assert "not delivered after 3 tries: HTTP 500" in caplog.text
    assert "credential-in-path" not in caplog.text and "credential-in-path" not in repr(webhook)


def test_webhook_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="https://"):
        Webhook("ftp://example.com/x", secret=SECRET)
    with pytest.raises(ConfigurationError, match="secret must not be empty"):
        Webhook("https://example.com/x", secret="")
    monkeypatch.setenv("GRANTKEEPER_WEBHOOK_URL", "https://example.com/x")
    monkeypatch.delenv("GRANTKEEPER_WEBHOOK_SECRET", raising=False)
    with pytest.raises(ConfigurationError, match="GRANTKEEPER_WEBHOOK_SECRET"):
        Webhook.from_env()


def test_cli_posts_to_the_webhook_from_the_environment(tmp_path: Path, make_sim: Sim, monkeypatch: pytest.MonkeyPatch,
                                                       receiver: Callable[[list[int]], Receiver]) -> None:  # fmt: skip
    """`grantkeeper refresh` on a revoked grant with GRANTKEEPER_WEBHOOK_URL set delivers the event before exiting."""
    sim = make_sim()
    url = f"sqlite://{tmp_path}/g.db"
    with Keeper.open(url) as keeper:
        refresh = add_grant(keeper, sim)
    sim.revoke_family(refresh)  # type: ignore[attr-defined]
    hook = receiver([])
    monkeypatch.setenv("GRANTKEEPER_WEBHOOK_URL", hook.url)
    monkeypatch.setenv("GRANTKEEPER_WEBHOOK_SECRET", SECRET)
    result = CliRunner().invoke(cli, ["--store", url, "refresh", "g", "--force"])
    assert result.exit_code == 5, result.output
    hook.wait_for(1)
    assert json.loads(hook.requests[0][1])["cause"] == "revoked_or_expired"


EVENT_CHILD = """
import sys, threading
from grantkeeper import GrantkeeperError, Keeper
from tests.helpers import FAST_POLICY

def record(event):
    with open(sys.argv[2], "a") as out:  # O_APPEND: whole lines from every process
        out.write(f"{event.kind} {event.cause} {event.worker}\\n")

with Keeper.open(sys.argv[1], policy=FAST_POLICY, on_event=record) as keeper:
    def call():
        try:
            keeper.refresh("g", force=True)
        except GrantkeeperError:
            pass
    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
"""


@pytest.mark.slow
def test_one_event_per_death_across_processes(tmp_path: Path, make_sim: Sim) -> None:
    """4 processes x 3 threads refresh a revoked grant at once: exactly one needs_reauth event in all."""
    import subprocess
    import sys

    sim = make_sim()
    url = f"sqlite://{tmp_path}/g.db"
    with Keeper.open(url) as keeper:
        refresh = add_grant(keeper, sim)
    sim.revoke_family(refresh)  # type: ignore[attr-defined]
    events = tmp_path / "events.txt"
    procs = [subprocess.Popen([sys.executable, "-c", EVENT_CHILD, url, str(events)]) for _ in range(4)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    lines = events.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("needs_reauth revoked_or_expired"), lines
    assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]
