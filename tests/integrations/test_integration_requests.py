"""requests bridge: RequestsGrantAuth signs requests and re-sends once, from a response hook, after a
rejected token. Same flow as the httpx bridge; the simulator's /resource is the resource server and its clock
(a FakeClock) expires tokens the keeper still trusts."""

from __future__ import annotations

import importlib
import io
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter

from grantkeeper import AsyncKeeper, ConfigurationError, Keeper
from grantkeeper.integrations import OUTCOME_KEY, AuthOutcome, MissingExtra
from grantkeeper.integrations.requests_auth import RequestsGrantAuth
from grantkeeper.testing.clock import FakeClock
from tests.integration_support import EXPIRE_ALL, Sim, keeper, refresh_calls, resource


class CountingAdapter(HTTPAdapter):
    """A real HTTP adapter that counts what it puts on the wire (including the bridge's re-sends)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self.sent += 1
        return super().send(request, *args, **kwargs)


pytest_plugins = ["tests.integration_fixtures"]  # the clock and sim fixtures
__all__ = ["keeper"]  # the fixture, from tests/integration_support.py


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    """The keeper (tests.integration_support.keeper, holding grant "g") is on SQLite here."""
    return sqlite_url


@pytest.fixture
def session() -> Iterator[tuple[requests.Session, CountingAdapter]]:
    adapter = CountingAdapter()
    with requests.Session() as s:
        s.mount("http://", adapter)
        yield s, adapter


def test_attaches_the_grant_token(keeper: Keeper, sim: object, session: tuple[requests.Session, Any]) -> None:
    """The request carries the grant's token; accepted, it is sent once."""
    s, adapter = session
    response = s.get(resource(sim), auth=RequestsGrantAuth(keeper, "g"), timeout=10)
    assert response.status_code == 200
    assert response.request.headers["Authorization"] == f"Bearer {keeper.access_token('g')}"
    assert getattr(response, OUTCOME_KEY) is AuthOutcome.SENT
    assert adapter.sent == 1 and refresh_calls(sim) == 1


def test_401_invalid_token_is_invalidated_and_retried_once(
    keeper: Keeper, sim: object, clock: FakeClock, session: tuple[requests.Session, Any]
) -> None:
    """A rejected token is reported, one refresh runs, the request is re-sent once and the 401 is in history."""
    keeper.access_token("g")
    generation = keeper.store.get_grant("g").generation
    clock.advance(EXPIRE_ALL)
    s, adapter = session
    response = s.get(resource(sim), auth=RequestsGrantAuth(keeper, "g"), timeout=10)
    assert response.status_code == 200
    assert getattr(response, OUTCOME_KEY) is AuthOutcome.RETRIED
    assert [r.status_code for r in response.history] == [401]
    assert adapter.sent == 2 and refresh_calls(sim) == 2
    assert keeper.store.get_grant("g").generation == generation + 1


def test_second_rejection_is_final(
    keeper: Keeper, sim: object, make_sim: Sim, session: tuple[requests.Session, Any]
) -> None:
    """A resource server that rejects every token sees the request twice, never more."""
    stranger = make_sim()
    keeper.access_token("g")
    s, adapter = session
    response = s.get(resource(stranger), auth=RequestsGrantAuth(keeper, "g"), timeout=10)
    assert response.status_code == 401
    assert getattr(response, OUTCOME_KEY) is AuthOutcome.REJECTED_AGAIN
    assert adapter.sent == 2 and refresh_calls(sim) == 2


def test_file_upload_is_not_retried(
    keeper: Keeper, sim: object, clock: FakeClock, session: tuple[requests.Session, Any]
) -> None:
    """A file-object body has been read by the first send: a 401 is returned as is, marked, token reported."""
    keeper.access_token("g")
    clock.advance(EXPIRE_ALL)
    s, adapter = session
    auth = RequestsGrantAuth(keeper, "g")
    response = s.post(resource(sim), data=io.BytesIO(b"u" * 5000), auth=auth, timeout=10)
    assert response.status_code == 401
    assert getattr(response, OUTCOME_KEY) is AuthOutcome.NOT_REPLAYABLE
    assert adapter.sent == 1 and refresh_calls(sim) == 1
    assert s.post(resource(sim), data=b"bytes replay fine", auth=auth, timeout=10).status_code == 200
    assert refresh_calls(sim) == 2


def test_16_threads_rejected_at_once_cause_one_refresh(keeper: Keeper, sim: object, clock: FakeClock) -> None:
    """Threads (one session each, one keeper) all rejected for the same token: one provider refresh."""
    keeper.access_token("g")
    clock.advance(EXPIRE_ALL)
    barrier = threading.Barrier(16)
    statuses: list[int] = []

    def worker() -> None:
        with requests.Session() as s:
            barrier.wait()
            statuses.append(s.get(resource(sim), auth=RequestsGrantAuth(keeper, "g"), timeout=10).status_code)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 16
    assert refresh_calls(sim) == 2


def test_a_redirect_after_the_flow_ended_is_left_alone(keeper: Keeper, sim: object) -> None:
    """requests copies hooks onto a redirected request; the flow that ended with the 302 must not act again
    (here requests drops the Authorization header for the other port, and the 401 comes back untouched)."""
    target = resource(sim)

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Redirect) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/start"
            response = requests.get(url, auth=RequestsGrantAuth(keeper, "g"), timeout=10)
        finally:
            server.shutdown()
    assert [r.status_code for r in response.history] == [302]
    assert response.status_code == 401 and "Authorization" not in response.request.headers
    assert refresh_calls(sim) == 1


@pytest.mark.anyio
async def test_needs_a_sync_keeper(async_keeper: AsyncKeeper) -> None:
    """requests is synchronous: an AsyncKeeper is refused at construction with a clear error."""
    with pytest.raises(ConfigurationError, match="Keeper"):
        RequestsGrantAuth(async_keeper, "g")  # type: ignore[arg-type]


def test_missing_requests_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing the bridge without requests installed says which extra to install."""
    monkeypatch.setitem(sys.modules, "requests", None)
    monkeypatch.delitem(sys.modules, "grantkeeper.integrations.requests_auth")
    with pytest.raises(MissingExtra, match=r"pip install 'grantkeeper\[requests\]'") as caught:
        importlib.import_module("grantkeeper.integrations.requests_auth")
    assert isinstance(caught.value, ImportError) and isinstance(caught.value, ConfigurationError)


def test_core_does_not_import_optional_clients() -> None:
    """`import grantkeeper` (and the httpx bridge, httpx being a core dependency) loads neither requests nor
    Authlib."""
    code = (
        "import sys, grantkeeper, grantkeeper.integrations.httpx_auth;"
        "print(sorted(m for m in ('requests', 'authlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_no_token_in_logs_or_reprs(
    keeper: Keeper, sim: object, clock: FakeClock, make_sim: Sim, caplog: pytest.LogCaptureFixture
) -> None:
    """Retries and final rejections log the grant, method and URL, never a token (I6)."""
    auth = RequestsGrantAuth(keeper, "g")
    keeper.access_token("g")
    clock.advance(EXPIRE_ALL)
    with caplog.at_level(logging.DEBUG):
        requests.get(resource(sim), auth=auth, timeout=10)
        requests.get(resource(make_sim()) + "?q=1", auth=auth, timeout=10)
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("grantkeeper"))
    assert "re-sent once" in ours and "rejected the access token again" in ours and "q=1" not in ours
    text = caplog.text + repr(auth)  # every logger, urllib3's too
    issued = sim.issued_tokens()  # type: ignore[attr-defined]
    assert issued and not [t for t in issued if t in text]
