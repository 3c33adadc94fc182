"""The aiohttp sender (`grantkeeper.tokens.aiohttp_transport`) keeps the exchange httpx's faces keep, against real
sockets: what `tests/tokens/test_transport.py` checks through httpx's mock transport (status and body, the request
as built, the kept headers, the body cap, NotSent vs Ambiguous), plus no redirect followed, no SOCKS proxy taken
silently, and a refresh through the engine on the simulator. The shared suites (deadlines, kept-alive connections,
cookies, TLS and proxies) run it too, through `tests/tokens/faces.py`."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from grantkeeper import ConfigurationError, RefreshPolicy, Secret
from grantkeeper.engine.keeper import AsyncKeeper
from grantkeeper.model.exchange import SendResult
from grantkeeper.protocol.answers import MAX_BODY_BYTES
from grantkeeper.stores import open_store
from grantkeeper.tokens import aiohttp_transport
from grantkeeper.tokens.aiohttp_transport import AiohttpSender
from grantkeeper.tokens.transport import Ambiguous, HttpReply, Network, NotSent
from tests.helpers import accept_forever, provider_for, read_request

URL_PATH = "/token"
Answer = Callable[[socket.socket], None]


@dataclass
class CannedServer:
    """Answers each request with `answer(conn)` after reading it whole; keeps every request's head and body."""

    answer: Answer
    requests: list[tuple[str, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}{URL_PATH}"
        threading.Thread(target=accept_forever, args=(self._listener, self._serve), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.closing(conn), contextlib.suppress(OSError):
            buffered = b""
            while True:  # requests on one kept-alive connection, one after another
                request = read_request(conn, buffered)
                if request is None:
                    return
                head, body, buffered = request
                self.requests.append((head.decode("latin-1"), body))
                self.answer(conn)

    def close(self) -> None:
        self._listener.close()


@contextlib.contextmanager
def canned(answer: Answer) -> Iterator[CannedServer]:
    server = CannedServer(answer)
    try:
        yield server
    finally:
        server.close()


def respond(status: str, headers: list[tuple[str, str]], body: bytes) -> Answer:
    head = "".join(f"{k}: {v}\r\n" for k, v in [*headers, ("Content-Length", str(len(body)))])
    return lambda conn: conn.sendall(f"HTTP/1.1 {status}\r\n{head}\r\n".encode() + body)


def _request(url: str) -> httpx.Request:
    return httpx.Request("POST", url, data={"grant_type": "refresh_token", "refresh_token": "rt"})


def send(url: str, *, budget: float = 10.0, network: Network | None = None) -> SendResult:
    async def run() -> SendResult:
        async with aiohttp_transport.session() as session:
            return await aiohttp_transport.asend(session, _request(url), budget=budget, network=network)

    return asyncio.run(run())


def test_a_reply_keeps_its_status_and_whole_body() -> None:
    with canned(respond("400 Bad Request", [], b'{"error":"invalid_grant"}')) as server:
        assert send(server.url) == HttpReply(400, {}, b'{"error":"invalid_grant"}', False)


def test_the_request_is_delivered_as_built_without_cookies() -> None:
    """Method, path, form body and the built headers reach the server; no cookie is sent back on a second
    exchange of the same session after the first answer set one."""
    answer = respond("200 OK", [("Set-Cookie", "session=tenant-a; Path=/")], b"{}")
    with canned(answer) as server:

        async def run() -> None:
            async with aiohttp_transport.session() as session:
                for _ in range(2):
                    request = _request(server.url)
                    request.headers["Authorization"] = "Basic Yzpz"
                    assert isinstance(await aiohttp_transport.asend(session, request, budget=5.0), HttpReply)

        asyncio.run(run())
    assert len(server.requests) == 2
    for head, body in server.requests:
        assert head.startswith(f"POST {URL_PATH} HTTP/1.1\r\n")
        assert "authorization: basic yzpz" in head.lower()
        assert "content-type: application/x-www-form-urlencoded" in head.lower()
        assert "cookie" not in head.lower()
        assert body == b"grant_type=refresh_token&refresh_token=rt"


def test_only_the_headers_the_protocol_reads_are_kept() -> None:
    headers = [("Content-Type", "application/json"), ("RETRY-AFTER", "30"), ("X-Request-Id", "a"),
               ("WWW-Authenticate", 'Bearer error="invalid_token"'), ("Set-Cookie", "s=1")]  # fmt: skip
    with canned(respond("429 Too Many Requests", headers, b"")) as server:
        result = send(server.url)
    assert isinstance(result, HttpReply)
    assert dict(result.headers) == {"content-type": "application/json", "retry-after": "30",
                                    "www-authenticate": 'Bearer error="invalid_token"'}  # fmt: skip


def test_a_redirect_is_an_answer_not_followed() -> None:
    with canned(respond("307 Temporary Redirect", [("Location", "http://127.0.0.1:9/elsewhere")], b"")) as server:
        result = send(server.url)
    assert isinstance(result, HttpReply) and result.status == 307
    assert len(server.requests) == 1


@pytest.mark.parametrize(("size", "truncated"), [(MAX_BODY_BYTES, False), (MAX_BODY_BYTES + 1, True)])
def test_the_body_cap(size: int, truncated: bool) -> None:
    with canned(respond("200 OK", [], b"y" * size)) as server:
        result = send(server.url)
    assert isinstance(result, HttpReply)
    assert (result.truncated, len(result.body)) == (truncated, 0 if truncated else size)


def test_reading_stops_soon_after_the_cap() -> None:
    """A server streaming 64 MiB: the sender hangs up soon after the cap instead of reading it all."""
    written: list[int] = []

    def stream(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (1024 * 65536))
        for _ in range(1024):
            conn.sendall(b"z" * 65536)
            written.append(1)

    with canned(stream) as server:
        result = send(server.url)
        time.sleep(0.5)  # the server's next write fails once the client has closed
    assert isinstance(result, HttpReply) and result.truncated
    assert len(written) < 1024 // 4


def test_a_refused_connection_is_not_sent() -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    result = send(f"http://127.0.0.1:{port}/token")
    assert isinstance(result, NotSent) and "ClientConnectorError" in result.reason, result


def test_a_reset_mid_body_is_ambiguous() -> None:
    def half(conn: socket.socket) -> None:
        conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"access_token": ')
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
        conn.close()

    with canned(half) as server:
        result = send(server.url)
    assert isinstance(result, Ambiguous), result


def test_a_connection_closed_without_an_answer_is_ambiguous() -> None:
    """The server read the request and hung up: it may have spent the token."""
    with canned(lambda conn: conn.close()) as server:
        result = send(server.url)
    assert isinstance(result, Ambiguous), result
    assert len(server.requests) == 1


def test_a_socks_proxy_is_refused_as_configuration() -> None:
    with pytest.raises(ConfigurationError, match="not socks5://") as raised:
        send("http://127.0.0.1:9/token", network=Network(proxy="socks5://user:secret@127.0.0.1:1080"))
    assert "secret" not in str(raised.value) and "user" not in str(raised.value)


def test_the_engine_refreshes_through_it(sqlite_url: str, make_sim: Callable[..., object]) -> None:
    """`AiohttpSender` as the engine's `AsyncSender`: refreshes rotate at the simulator and commit in order."""
    sim = make_sim()
    store = open_store(sqlite_url)
    store.put_provider(provider_for(sim), now=time.time())
    store.import_grant("g", provider="sim", refresh_token=Secret(sim.issue_grant()), scopes=(), now=time.time())  # type: ignore[attr-defined]
    policy = RefreshPolicy(lease_ttl=30.0, request_timeout=5.0, wait_timeout=10.0, deadline=10.0)

    async def run() -> list[int]:
        async with aiohttp_transport.session() as session:
            keeper = AsyncKeeper(store, sender=AiohttpSender(session), policy=policy)
            try:
                return [(await keeper.refresh("g", force=True)).generation for _ in range(3)]
            finally:
                await keeper.aclose()

    try:
        assert asyncio.run(run()) == [2, 3, 4]
    finally:
        store.close()
    stats = sim.stats  # type: ignore[attr-defined]
    assert stats.successes == 3 and not stats.errors and stats.reuse_detections == 0
