"""The proxy's upstream client as serve builds it (`api_session`), over real loopback HTTP: one kept-alive
connection with TCP_NODELAY, no state carried from one caller's exchange to the next, and no import-system search
on a warm request."""

from __future__ import annotations

import asyncio
import importlib.abc
import socket
import sys
from collections.abc import Iterator, Sequence
from types import ModuleType

import aiohttp
import httpx
import pytest

from grantkeeper._exceptions import ConfigurationError
from grantkeeper.serve.upstream import api_session
from grantkeeper.tokens.transport import Network
from tests.serve_proxy.servers import ProxySettings, Served, Tokens, Upstream, proxy_app


class _Sockets:
    """What the session's trace saw of the upstream connections after each request: (local address, TCP_NODELAY)."""

    def __init__(self) -> None:
        self.seen: list[tuple[tuple[str, int], int]] = []

    async def hook(self, session: aiohttp.ClientSession, _context: object, _params: object) -> None:
        # A small answer is read whole, so its connection is back in the keep-alive pool by now; aiohttp has no
        # public listing of that pool.
        assert session.connector is not None
        for pooled in session.connector._conns.values():  # type: ignore[attr-defined]
            for protocol, _ in pooled:
                sock = protocol.transport.get_extra_info("socket")
                self.seen.append((sock.getsockname(), sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))


@pytest.fixture
def sockets() -> _Sockets:
    return _Sockets()


@pytest.fixture
def proxy_url(upstream: tuple[Upstream, Served], sockets: _Sockets) -> Iterator[str]:
    base_url = upstream[1].url + "/api"

    def make_client() -> aiohttp.ClientSession:
        client = api_session(Network(), base_url)
        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(sockets.hook)
        trace.freeze()
        client._trace_configs.append(trace)  # the session's own settings, plus this trace
        return client

    tokens = Tokens(upstream[0])
    proxy = Served(proxy_app(ProxySettings(base_url=base_url), tokens.get, tokens.report, make_client=make_client))
    yield proxy.url + "/v1/proxy/g/"
    proxy.stop()


def test_one_connection_kept_alive_with_nodelay(upstream: tuple[Upstream, Served], sockets: _Sockets,
                                                proxy_url: str) -> None:  # fmt: skip
    with httpx.Client(trust_env=False, timeout=30) as caller:
        for _ in range(4):
            assert caller.get(proxy_url + "plain").status_code == 200
    assert sockets.seen, "no pooled upstream connection was seen"
    assert len({address for address, _ in sockets.seen}) == 1, "the upstream connection was not reused"
    assert all(nodelay for _, nodelay in sockets.seen), "Nagle left on: small writes would wait for delayed ACKs"
    assert len(upstream[0].seen) == 4 and len({seen.peer for seen in upstream[0].seen}) == 1


def test_cookies_set_by_the_api_are_not_sent_for_later_callers(upstream: tuple[Upstream, Served],
                                                               proxy_url: str) -> None:  # fmt: skip
    # "things" answers with Set-Cookie. The client is shared by every caller of the provider: a cookie jar would
    # hand one caller's upstream session to the next (the caller's own Cookie header is dropped on purpose).
    with httpx.Client(trust_env=False, timeout=30) as caller:
        first = caller.get(proxy_url + "things")
        assert first.status_code == 200 and "set-cookie" not in first.headers
        assert caller.get(proxy_url + "plain").status_code == 200
    assert [seen.has("cookie") for seen in upstream[0].seen] == [False, False]


class _ImportSearches(importlib.abc.MetaPathFinder):
    """Records every name the import system searches for (a module already imported is not searched)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> None:
        self.names.append(fullname)


def test_warm_request_searches_the_import_path_for_nothing(proxy_url: str) -> None:
    # httpcore calls `import sniffio` on every lock, semaphore and cancellation shield it sets up; when sniffio is
    # not installed each of those is a failed import that stats every sys.path entry, several per request.
    searches = _ImportSearches()
    with httpx.Client(trust_env=False, timeout=30) as caller:
        for _ in range(3):
            assert caller.get(proxy_url + "plain").status_code == 200
        sys.meta_path.insert(0, searches)
        try:
            for _ in range(3):
                assert caller.get(proxy_url + "plain").status_code == 200
        finally:
            sys.meta_path.remove(searches)
    assert searches.names == []


def test_a_socks_proxy_is_refused_with_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as refused:
        api_session(Network(proxy="socks5://127.0.0.1:1080"), "https://api.example.com/v1")
    assert "HTTP and HTTPS proxies only" in refused.value.message and "--proxy" in refused.value.message


def test_an_http_proxy_is_the_sessions_proxy() -> None:
    async def scenario() -> None:
        async with api_session(Network(proxy="http://127.0.0.1:3128"), "https://api.example.com/v1") as session:
            assert str(session._default_proxy) == "http://127.0.0.1:3128"  # aiohttp keeps it privately

    asyncio.run(scenario())
