"""The aiohttp sender builds a refresh from the model (`request.refresh_post`) without an `httpx.Request` in
between, and what it puts on the wire is byte for byte what it sent when it went through one
(`build_refresh_request`, the httpx path): every header, in order, and the body, for each client authentication
method, with scopes, and through a provider's own proxy. A loopback server records each request's raw bytes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace

import pytest

from grantkeeper import Secret
from grantkeeper.model import AuthMethod, Provider
from grantkeeper.model.exchange import HttpReply, RefreshRequest
from grantkeeper.tokens import aiohttp_transport, assertion, request
from grantkeeper.tokens.aiohttp_transport import AiohttpSender
from grantkeeper.tokens.transport import NETWORK, Network
from tests.helpers import accept_forever, read_request
from tests.signing_keys import key_file

NOW = 1_800_000_000.0
REFRESH = Secret("rt/with+reserved=chars&é")
_ANSWER = b'{"access_token": "at", "token_type": "Bearer", "expires_in": 60}'


class Recorder:
    """An HTTP server (or proxy: it answers absolute-form requests too) on 127.0.0.1 that keeps each request's raw
    bytes, head and body, and answers 200 with a token."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.requests: list[bytes] = []
        self._lock = threading.Lock()
        threading.Thread(target=accept_forever, args=(self._listener, self._answer), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with contextlib.closing(conn):
            request = read_request(conn)
            if request is None:
                return
            head, body, _ = request
            with self._lock:
                self.requests.append(head + b"\r\n\r\n" + body)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(_ANSWER), _ANSWER))  # fmt: skip

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.close()


def _provider(method: AuthMethod, url: str) -> Provider:
    secret = Secret("s3cret:with /+%") if method in (AuthMethod.CLIENT_SECRET_BASIC,
                                                     AuthMethod.CLIENT_SECRET_POST) else None  # fmt: skip
    return Provider(name="p", token_url=f"{url}/oauth/token?tenant=a%20b", client_id="client id:1", auth_method=method,
                    client_secret=secret, private_key_file=key_file("rsa") if method is AuthMethod.PRIVATE_KEY_JWT
                    else None)  # fmt: skip


CASES = {
    "client_secret_post": (AuthMethod.CLIENT_SECRET_POST, {}),
    "client_secret_basic": (AuthMethod.CLIENT_SECRET_BASIC, {}),
    "private_key_jwt": (AuthMethod.PRIVATE_KEY_JWT, {}),
    "none": (AuthMethod.NONE, {}),
    "scopes": (AuthMethod.CLIENT_SECRET_BASIC, {"send_scope": True}),
    "proxy": (AuthMethod.CLIENT_SECRET_POST, {"proxy": True}),
}


@pytest.fixture(autouse=True)
def _fixed_assertion(monkeypatch: pytest.MonkeyPatch) -> None:
    """The assertion's clock and jti fixed, so that two assertions of one provider are the same bytes (RS256 is
    deterministic)."""
    monkeypatch.setattr(request, "time", SimpleNamespace(time=lambda: NOW))
    monkeypatch.setattr(assertion, "secrets", SimpleNamespace(token_urlsafe=lambda _n: "fixed-jti"))


@pytest.mark.parametrize("case", list(CASES))
def test_the_parts_are_the_httpx_requests_headers_and_body(case: str, recorder: Recorder) -> None:
    method, options = CASES[case]
    provider = replace(_provider(method, recorder.url), send_scope=bool(options.get("send_scope")))
    scopes = ("read", "write:all")
    built = request.build_refresh_request(provider, REFRESH, scopes=scopes, now=NOW)
    post = request.refresh_post(provider, REFRESH, scopes=scopes)
    own = {b"host", b"content-length"}
    assert post.headers == tuple((k.decode(), v.decode()) for k, v in built.headers.raw if k.lower() not in own)
    assert post.body == built.read()
    assert post.url == str(built.url)
    assert post.network == built.extensions[NETWORK] == Network.of(provider)
    assert REFRESH.reveal() not in repr(post) and "s3cret" not in repr(post)


@pytest.mark.parametrize("case", list(CASES))
def test_the_wire_bytes_are_those_sent_through_an_httpx_request(case: str, recorder: Recorder) -> None:
    method, options = CASES[case]
    if options.get("proxy"):
        # The recorder as the provider's proxy: an http:// endpoint is asked for in absolute form through it.
        provider = replace(_provider(method, "http://localhost:9"), proxy=recorder.url)
    else:
        provider = replace(_provider(method, recorder.url), send_scope=bool(options.get("send_scope")))
    scopes = ("read", "write:all")

    async def both() -> tuple[object, object]:
        async with aiohttp_transport.session() as session:
            through_httpx = await aiohttp_transport.asend(
                session, request.build_refresh_request(provider, REFRESH, scopes=scopes, now=NOW), budget=5.0
            )
            direct = await AiohttpSender(session).send(RefreshRequest(provider, REFRESH, scopes), budget=5.0)
            return through_httpx, direct

    through_httpx, direct = asyncio.run(both())
    assert isinstance(through_httpx, HttpReply) and through_httpx.status == 200
    assert direct == through_httpx
    assert len(recorder.requests) == 2
    assert recorder.requests[1] == recorder.requests[0]
    line = recorder.requests[0].split(b"\r\n", 1)[0]
    if options.get("proxy"):
        assert line == b"POST http://localhost:9/oauth/token?tenant=a%20b HTTP/1.1"
    else:
        assert line == b"POST /oauth/token?tenant=a%20b HTTP/1.1"
    body = recorder.requests[0].split(b"\r\n\r\n", 1)[1]
    assert body.startswith(b"grant_type=refresh_token&refresh_token=rt%2Fwith%2Breserved%3Dchars%26%C3%A9")
    assert (b"&scope=read+write%3Aall" in body) == bool(options.get("send_scope"))
