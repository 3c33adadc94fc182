"""Corporate networks: a token endpoint behind a private CA and an HTTP CONNECT proxy (issue 17, item 3).

The provider simulator serves HTTPS with a certificate from a `trustme` test CA; `ConnectProxy` is a real
CONNECT proxy on loopback that records every tunnel it opened. Keeper, AsyncKeeper, ``grantkeeper refresh``
and ``grantkeeper provider discover`` all go through the same client factory (tokens/transport.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trustme

from grantkeeper import AsyncKeeper, Keeper, TLSVerificationFailed
from grantkeeper.engine.keeper import AsyncKeeper as EngineAsyncKeeper
from grantkeeper.model import AttemptState
from grantkeeper.stores import open_store
from grantkeeper.testing.simulator import ProviderSimulator
from grantkeeper.tokens import aiohttp_transport
from grantkeeper.tokens.aiohttp_transport import AiohttpSender
from grantkeeper.tokens.discovery import discover
from grantkeeper.tokens.transport import Network
from tests.helpers import FAST_POLICY, accept_forever, provider_for, read_request


class ConnectProxy:
    """An HTTP CONNECT proxy on 127.0.0.1: tunnels bytes both ways and keeps each CONNECT's request head."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.heads: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def targets(self) -> list[str]:
        with self._lock:
            return [head.split()[1] for head in self.heads]

    def _serve(self) -> None:
        accept_forever(self._listener, self._tunnel)

    def _tunnel(self, client: socket.socket) -> None:
        with contextlib.closing(client):
            request = read_request(client)
            if request is None:
                return
            text = request[0].decode("latin-1")
            with self._lock:
                self.heads.append(text)
            method, target = text.split()[:2]
            if method != "CONNECT":
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            host, port = target.rsplit(":", 1)
            # A reset is how a tunnel often ends (a client that refused the certificate): not a test failure.
            with socket.create_connection((host, int(port))) as upstream, contextlib.suppress(OSError):
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                _pipe(client, upstream)

    def close(self) -> None:
        self._listener.close()


def _pipe(a: socket.socket, b: socket.socket) -> None:
    peers = {a: b, b: a}
    while True:
        readable, _, _ = select.select(list(peers), [], [], 10.0)
        if not readable:
            return
        for sock in readable:
            data = sock.recv(65536)
            if not data:
                return
            peers[sock].sendall(data)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "test-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def sim(ca: trustme.CA) -> Iterator[ProviderSimulator]:
    """The simulator serving HTTPS with a certificate for 127.0.0.1 signed by the test CA."""
    simulator = ProviderSimulator()
    simulator.start()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    server = simulator._server  # the simulator has no TLS option: wrap its listening socket in place
    assert server is not None
    server.socket = context.wrap_socket(server.socket, server_side=True)
    yield simulator
    simulator.stop()


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    p = ConnectProxy()
    yield p
    p.close()


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test from no proxy and no CA variables (the machine may set SSL_CERT_FILE)."""
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def https(sim: ProviderSimulator) -> str:
    return sim.base_url.replace("http://", "https://")


def _keeper_with_grant(url: str, sim: ProviderSimulator, **network: str | None) -> str:
    refresh = str(sim.issue_grant())
    with Keeper.open(url, policy=FAST_POLICY) as keeper:
        keeper.add_provider(replace(provider_for(sim), token_url=https(sim) + "/token", **network))  # type: ignore[arg-type]
        keeper.import_grant("g", provider="sim", refresh_token=refresh)
    return refresh


class TestPrivateCA:
    def test_unverified_certificate_is_a_configuration_error_not_a_send(
        self, sqlite_url: str, sim: ProviderSimulator, ca_file: str
    ) -> None:
        """No CA bundle: TLSVerificationFailed naming the cause and the fix; recorded as not sent, never
        retried, so once the bundle is given the next refresh is an ordinary one (no re-send of a 'maybe
        spent' token)."""
        _keeper_with_grant(sqlite_url, sim)
        with Keeper.open(sqlite_url, policy=FAST_POLICY) as keeper:
            with pytest.raises(TLSVerificationFailed) as raised:
                keeper.refresh("g", force=True)
            message = raised.value.message
            assert "certificate verify failed: unable to get local issuer certificate" in message
            assert "--ca-bundle" in message and "SSL_CERT_FILE" in message
            assert raised.value.exit_code == 3
            attempts = keeper.history("g")
            assert [a.state for a in attempts] == [AttemptState.NOT_SENT]
            assert sim.stats.refresh_calls == 0
            keeper.add_provider(replace(keeper.store.get_provider("sim"), ca_bundle=ca_file))
            grant = keeper.refresh("g", force=True)
            assert grant.generation == 2 and sim.stats.successes == 1
            assert keeper.history("g")[0].resend_of is None

    def test_ssl_cert_file_is_honoured(
        self, sqlite_url: str, sim: ProviderSimulator, ca_file: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _keeper_with_grant(sqlite_url, sim)
        monkeypatch.setenv("SSL_CERT_FILE", ca_file)
        with Keeper.open(sqlite_url, policy=FAST_POLICY) as keeper:
            assert keeper.refresh("g", force=True).generation == 2

    def test_provider_bundle_wins_over_ssl_cert_file(
        self, sqlite_url: str, sim: ProviderSimulator, ca_file: str, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
    ) -> None:  # fmt: skip
        """A provider's bundle replaces the environment's: a wrong one fails even with SSL_CERT_FILE right."""
        other = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other))
        _keeper_with_grant(sqlite_url, sim, ca_bundle=str(other))
        monkeypatch.setenv("SSL_CERT_FILE", ca_file)
        with (
            Keeper.open(sqlite_url, policy=FAST_POLICY) as keeper,
            pytest.raises(TLSVerificationFailed, match=f"against the provider's CA bundle {other}"),
        ):
            keeper.refresh("g", force=True)

    @pytest.mark.anyio
    async def test_async_keeper_with_bundle(self, sqlite_url: str, sim: ProviderSimulator, ca_file: str) -> None:
        _keeper_with_grant(sqlite_url, sim, ca_bundle=ca_file)

        async with await AsyncKeeper.open(sqlite_url, policy=FAST_POLICY) as keeper:
            assert (await keeper.refresh("g", force=True)).generation == 2


class TestProxy:
    def test_provider_proxy_carries_the_exchange(
        self, sqlite_url: str, sim: ProviderSimulator, ca_file: str, proxy: ConnectProxy,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:  # fmt: skip
        """The stored proxy is used even for loopback and even when NO_PROXY names the host (it wins over
        the environment); the CONNECT carries no credentials or token."""
        refresh = _keeper_with_grant(sqlite_url, sim, ca_bundle=ca_file, proxy=proxy.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        with Keeper.open(sqlite_url, policy=FAST_POLICY) as keeper:
            assert keeper.refresh("g", force=True).generation == 2
        port = sim.base_url.rsplit(":", 1)[1]
        assert proxy.targets == [f"127.0.0.1:{port}"]
        head = proxy.heads[0]
        assert "authorization" not in head.lower() and refresh not in head and sim.client_secret not in head

    def test_environment_proxy_and_no_proxy(
        self, sqlite_url: str, sim: ProviderSimulator, ca_file: str, proxy: ConnectProxy,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:  # fmt: skip
        _keeper_with_grant(sqlite_url, sim, ca_bundle=ca_file)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        with Keeper.open(sqlite_url, policy=FAST_POLICY) as keeper:
            keeper.refresh("g", force=True)
            assert len(proxy.targets) == 1
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            keeper.refresh("g", force=True)
            assert len(proxy.targets) == 1  # bypassed
        assert sim.stats.successes == 2

    @pytest.mark.anyio
    async def test_async_keeper_through_environment_proxy(
        self, sqlite_url: str, sim: ProviderSimulator, ca_file: str, proxy: ConnectProxy,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:  # fmt: skip
        _keeper_with_grant(sqlite_url, sim, ca_bundle=ca_file)
        monkeypatch.setenv("https_proxy", proxy.url)

        async with await AsyncKeeper.open(sqlite_url, policy=FAST_POLICY) as keeper:
            assert (await keeper.refresh("g", force=True)).generation == 2
        assert len(proxy.targets) == 1

    def test_tls_failure_through_proxy_is_still_a_configuration_error(
        self, sqlite_url: str, sim: ProviderSimulator, proxy: ConnectProxy
    ) -> None:
        _keeper_with_grant(sqlite_url, sim, proxy=proxy.url)
        with (
            Keeper.open(sqlite_url, policy=FAST_POLICY) as keeper,
            pytest.raises(TLSVerificationFailed, match="certificate verify failed"),
        ):
            keeper.refresh("g", force=True)
        assert len(proxy.targets) == 1 and sim.stats.refresh_calls == 0


def _aiohttp_refresh(url: str) -> int:
    """Refresh grant g once through the engine on the aiohttp sender; its new generation."""

    async def run() -> int:
        async with aiohttp_transport.session() as session:
            keeper = EngineAsyncKeeper(store, sender=AiohttpSender(session), policy=FAST_POLICY)
            try:
                return (await keeper.refresh("g", force=True)).generation
            finally:
                await keeper.aclose()

    store = open_store(url)
    try:
        return asyncio.run(run())
    finally:
        store.close()


class TestAiohttpSender:
    """The aiohttp sender takes the same trust and proxies as the httpx clients."""

    def test_an_unverified_certificate_is_a_configuration_error_then_the_bundle_works(
        self, sqlite_url: str, sim: ProviderSimulator, ca_file: str
    ) -> None:
        _keeper_with_grant(sqlite_url, sim)
        with pytest.raises(TLSVerificationFailed, match="against certifi's CA bundle: certificate verify failed"):
            _aiohttp_refresh(sqlite_url)
        assert sim.stats.refresh_calls == 0
        with Keeper.open(sqlite_url, policy=FAST_POLICY) as keeper:
            assert [a.state for a in keeper.history("g")] == [AttemptState.NOT_SENT]
            keeper.add_provider(replace(keeper.store.get_provider("sim"), ca_bundle=ca_file))
        assert _aiohttp_refresh(sqlite_url) == 2

    def test_the_provider_proxy_carries_the_exchange(
        self, sqlite_url: str, sim: ProviderSimulator, ca_file: str, proxy: ConnectProxy,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:  # fmt: skip
        refresh = _keeper_with_grant(sqlite_url, sim, ca_bundle=ca_file, proxy=proxy.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        assert _aiohttp_refresh(sqlite_url) == 2
        assert proxy.targets == [f"127.0.0.1:{sim.base_url.rsplit(':', 1)[1]}"]
        head = proxy.heads[0]
        assert "authorization" not in head.lower() and refresh not in head and sim.client_secret not in head

    def test_the_environment_proxy_and_no_proxy(
        self, sqlite_url: str, sim: ProviderSimulator, ca_file: str, proxy: ConnectProxy,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:  # fmt: skip
        _keeper_with_grant(sqlite_url, sim, ca_bundle=ca_file)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        assert _aiohttp_refresh(sqlite_url) == 2
        assert len(proxy.targets) == 1
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert _aiohttp_refresh(sqlite_url) == 3
        assert len(proxy.targets) == 1  # bypassed


def cli(store_url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    return subprocess.run(
        [sys.executable, "-m", "grantkeeper", "--store", store_url, *args], capture_output=True, text=True,
        env={**base, **(env or {})}, timeout=120, check=False,
    )  # fmt: skip


class TestCommandLine:
    def test_refresh_names_the_tls_cause_then_works_with_ca_bundle(
        self, sqlite_url: str, sim: ProviderSimulator, ca_file: str, proxy: ConnectProxy
    ) -> None:
        _keeper_with_grant(sqlite_url, sim)
        failed = cli(sqlite_url, "refresh", "g", "--force")
        assert failed.returncode == 3, failed.stderr
        assert "tls_verification_failed" in failed.stderr
        assert "certificate verify failed: unable to get local issuer certificate" in failed.stderr
        assert "retry" not in failed.stderr.lower()
        added = cli(sqlite_url, "provider", "add", "sim", "--ca-bundle", ca_file, "--proxy", proxy.url)
        assert added.returncode == 0, added.stderr
        done = cli(sqlite_url, "refresh", "g", "--force")
        assert done.returncode == 0, done.stderr
        assert sim.stats.successes == 1 and len(proxy.targets) == 1

    def test_refresh_with_ssl_cert_file_and_https_proxy(
        self, sqlite_url: str, sim: ProviderSimulator, ca_file: str, proxy: ConnectProxy
    ) -> None:
        _keeper_with_grant(sqlite_url, sim)
        done = cli(sqlite_url, "refresh", "g", "--force", env={"SSL_CERT_FILE": ca_file, "HTTPS_PROXY": proxy.url})
        assert done.returncode == 0, done.stderr
        assert len(proxy.targets) == 1

    def test_discover_over_https_with_the_test_ca(
        self, sqlite_url: str, sim: ProviderSimulator, ca_file: str, proxy: ConnectProxy,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:  # fmt: skip
        issuer = https(sim)
        sim.serve_metadata({**sim.metadata(), "issuer": issuer, "token_endpoint": issuer + "/token"})
        args = ("provider", "discover", "sim", "--issuer", issuer, "--client-id", sim.client_id,
                "--client-secret-env", "SIM_SECRET")  # fmt: skip
        env = {"SIM_SECRET": sim.client_secret}
        failed = cli(sqlite_url, *args, env=env)
        assert failed.returncode == 3 and "certificate verify failed" in failed.stderr, failed.stderr
        added = cli(sqlite_url, *args, "--ca-bundle", ca_file, "--proxy", proxy.url, env=env)
        assert added.returncode == 0, added.stderr
        assert len(proxy.targets) == 1
        again = cli(sqlite_url, *args, env=env)  # discovering again reaches the issuer as the stored provider does
        assert again.returncode == 0, again.stderr
        assert len(proxy.targets) == 2
        monkeypatch.setenv("SIM_SECRET", sim.client_secret)
        with Keeper.open(sqlite_url, policy=FAST_POLICY) as keeper:
            stored = keeper.store.get_provider("sim")
            assert (stored.token_url, stored.ca_bundle, stored.proxy) == (issuer + "/token", ca_file, proxy.url)
            keeper.import_grant("g", provider="sim", refresh_token=str(sim.issue_grant()))
            assert keeper.refresh("g", force=True).generation == 2

    def test_discover_function_names_the_trust_source(self, sim: ProviderSimulator, ca_file: str) -> None:
        issuer = https(sim)
        sim.serve_metadata({**sim.metadata(), "issuer": issuer, "token_endpoint": issuer + "/token"})
        with pytest.raises(TLSVerificationFailed, match="against certifi's CA bundle"):
            discover(issuer)
        assert discover(issuer, network=Network(ca_bundle=ca_file)).token_endpoint == issuer + "/token"
