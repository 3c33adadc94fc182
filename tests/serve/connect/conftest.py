"""Hosted connect against django-oauth-toolkit: a broker with a public URL, DOT as the provider, a webhook.

`hosted` starts DOT (tests/dot_server.py), stores provider "dot" with DOT's authorization endpoint, starts
``grantkeeper serve --public-url http://127.0.0.1:<port>`` on a port chosen up front (the public URL names it),
with the webhook pointed at `receiver`, and makes API key "platform" (scope ``connect``, grants ``acme-*``).
`Hosted.secrets` gathers every secret of the flow (codes, verifiers, tokens) for the leak scans.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from grantkeeper import Keeper
from grantkeeper.stores import open_store
from tests.dot_server import DotFactory, DotServer
from tests.serve.conftest import Hooks, ServeProcess, make_key
from tests.system.test_canary import find_leaks

Start = Callable[..., ServeProcess]
WEBHOOK_SECRET = "connect-hook-secret"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Hosted:
    store_url: str
    dot: DotServer
    server: ServeProcess
    key: str
    hooks: Hooks
    #: Every answer of the broker a test saw, as (what, status line + headers + body), for the leak scans.
    captures: list[tuple[str, str]] = field(default_factory=list)
    codes: set[str] = field(default_factory=set)

    def api(self, key: str | None = None) -> httpx.Client:
        return self.server.client(self.key if key is None else key)

    def create(self, grant: str = "acme-42", *, key: str | None = None, **body: object) -> httpx.Response:
        with self.api(key) as http:
            answer = http.post("/v1/connect-sessions", json={"grant": grant, "provider": "dot",
                                                             "scopes": ["read", "write"], **body})  # fmt: skip
        return self.keep("create", answer)

    def url(self, grant: str = "acme-42", **body: object) -> str:
        answer = self.create(grant, **body)
        assert answer.status_code == 201, answer.text
        return str(answer.json()["url"])

    def keep(self, what: str, answer: httpx.Response) -> httpx.Response:
        head = "\n".join(f"{k}: {v}" for k, v in answer.headers.items())
        self.captures.append((what, f"{answer.status_code}\n{head}\n\n{answer.text}"))
        return answer

    def remember_code(self, callback_url: str) -> None:
        self.codes.update(parse_qs(urlsplit(callback_url).query).get("code", []))

    def events(self, count: int, timeout: float = 30.0) -> list[dict[str, object]]:
        """The first `count` webhook deliveries, parsed (waits for them)."""
        deadline = time.monotonic() + timeout
        while len(self.hooks.bodies) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.hooks.bodies) >= count, f"{len(self.hooks.bodies)} webhook deliveries, expected {count}"
        return [json.loads(body) for body in self.hooks.bodies[:count]]

    def secrets(self) -> set[str]:
        """The codes seen, every stored session's verifier and every stored grant's tokens."""
        found = set(self.codes)
        store = open_store(self.store_url)
        try:
            with store._tx(write=False) as conn:
                rows = conn.execute("SELECT id, verifier FROM connect_sessions WHERE verifier IS NOT NULL").fetchall()
            for session_id, blob in rows:
                verifier = store._open(bytes(blob), "connect_sessions", session_id, "verifier")
                assert verifier is not None
                found.add(verifier.reveal())
            for grant in store.list_grants():
                full = store.get_grant(grant.name)
                found.update(t.reveal() for t in (full.refresh_token, full.access_token) if t is not None)
        finally:
            store.close()
        return found

    def leaks(self, extra: list[tuple[str, str]] = ()) -> list[str]:  # type: ignore[assignment]
        captures = [*self.captures, *extra, ("serve log", self.server.log_text())]
        captures += [(f"webhook {i}", body.decode()) for i, body in enumerate(self.hooks.bodies)]
        return find_leaks(captures, self.secrets())


@pytest.fixture
def hosted(serve_store: str, dot_server: DotFactory, serve_process: Start, receiver: Hooks) -> Hosted:
    return start_hosted(serve_store, dot_server(), serve_process, receiver)


def start_hosted(store_url: str, dot: DotServer, serve_process: Start, hooks: Hooks, *args: str) -> Hosted:
    with Keeper.open(store_url) as keeper:
        keeper.add_provider(dot.provider("dot", authorization_url=dot.authorize_url))
    key = make_key(store_url, "platform", grants="acme-*", scopes="connect")
    port = free_port()
    server = serve_process(store_url, "--port", str(port), "--public-url", f"http://127.0.0.1:{port}", *args,
                           env={"GRANTKEEPER_WEBHOOK_URL": hooks.url,
                                "GRANTKEEPER_WEBHOOK_SECRET": WEBHOOK_SECRET})  # fmt: skip
    return Hosted(store_url, dot, server, key, hooks)
