"""Token requests carry no cookies and the clients keep none: a cookie one provider sets on one grant's answer is
neither stored nor sent with the next request, whichever grant or tenant it is for (one client serves them all)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from grantkeeper.tokens.transport import HttpReply, client, send
from tests.tokens.faces import ASYNC_FACES, async_sender


class _CookieSetter(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[str | None] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append(self.headers.get("Cookie"))
        body = b'{"access_token": "at", "token_type": "Bearer"}'
        self.send_response(200)
        self.send_header("Set-Cookie", "session=tenant-a-secret; Path=/")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        return None


@pytest.fixture
def url() -> Iterator[str]:
    _CookieSetter.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CookieSetter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/token"
    server.shutdown()
    server.server_close()


def _post(url: str, token: str) -> httpx.Request:
    return httpx.Request("POST", url, data={"refresh_token": token})


def test_a_cookie_set_on_one_answer_is_never_sent_back(url: str) -> None:
    with client() as http:
        replies = [send(http, _post(url, f"rt-{grant}"), budget=5.0) for grant in ("a", "b", "c")]
        assert len(http.cookies.jar) == 0
    assert all(isinstance(r, HttpReply) and r.status == 200 for r in replies)
    assert _CookieSetter.seen == [None, None, None]


@pytest.mark.parametrize("face", ASYNC_FACES)
def test_the_async_clients_keep_no_cookies_either(url: str, face: str) -> None:
    async def run() -> None:
        async with async_sender(face) as asend:
            for grant in ("a", "b"):
                assert isinstance(await asend(_post(url, f"rt-{grant}"), 5.0), HttpReply)

    asyncio.run(run())
    assert _CookieSetter.seen == [None, None]
