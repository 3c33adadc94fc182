"""Token requests reuse kept-alive connections, and the exchange's one deadline still holds on a reused one.

`KeepAliveServer` speaks HTTP/1.1 with keep-alive: it answers requests on one connection until a request carries
``refresh_token=trickle``, which it answers with a status line and then one header byte every `INTERVAL` seconds
(httpx's per-phase read timeout never fires on that: each byte restarts it). It records, per TCP connection,
the requests it served and whether the client hung up on a trickle before the server gave up.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from grantkeeper.tokens.transport import Ambiguous, HttpReply, client, send
from tests.helpers import accept_forever, read_form_request
from tests.tokens.faces import ASYNC_FACES, async_sender

INTERVAL = 0.5
GIVE_UP = 12.0


@dataclass
class Connection:
    tokens: list[str] = field(default_factory=list)
    hung_up_on_trickle: bool = False


@dataclass
class KeepAliveServer:
    connections: list[Connection] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/token"
        threading.Thread(target=accept_forever, args=(self._listener, self._serve), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        seen = Connection()
        self.connections.append(seen)
        buffered = b""
        with contextlib.closing(conn), contextlib.suppress(OSError):
            while True:
                request = read_form_request(conn, buffered)
                if request is None:
                    return
                form, buffered = request
                token = form["refresh_token"]
                seen.tokens.append(token)
                if token == "trickle":
                    seen.hung_up_on_trickle = self._trickle(conn)
                    return
                answer = b'{"access_token": "at", "token_type": "Bearer", "expires_in": 60}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(answer), answer))  # fmt: skip

    @staticmethod
    def _trickle(conn: socket.socket) -> bool:
        conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nX-Pad: ")
        started = time.monotonic()
        while time.monotonic() - started < GIVE_UP:
            readable, _, _ = select.select([conn], [], [], INTERVAL)
            if readable and not conn.recv(1):
                return True
            try:
                conn.sendall(b"a")
            except OSError:
                return True
        return False

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def server() -> Iterator[KeepAliveServer]:
    s = KeepAliveServer()
    yield s
    s.close()


def _post(url: str, token: str) -> httpx.Request:
    return httpx.Request("POST", url, data={"refresh_token": token})


def _wait_for_hang_up(server: KeepAliveServer) -> Connection:
    for _ in range(200):
        if server.connections and server.connections[-1].hung_up_on_trickle:
            break
        time.sleep(0.05)
    return server.connections[-1]


def test_token_requests_share_one_kept_alive_connection(server: KeepAliveServer) -> None:
    with client() as http:
        results = [send(http, _post(server.url, f"rt{i}"), budget=5.0) for i in range(5)]
    assert all(isinstance(r, HttpReply) and r.status == 200 for r in results), results
    assert [c.tokens for c in server.connections] == [[f"rt{i}" for i in range(5)]]


@pytest.mark.parametrize("face", ASYNC_FACES)
def test_async_token_requests_share_one_kept_alive_connection(server: KeepAliveServer, face: str) -> None:
    async def run() -> list[object]:
        async with async_sender(face) as asend:
            return [await asend(_post(server.url, f"rt{i}"), 5.0) for i in range(5)]

    results = asyncio.run(run())
    assert all(isinstance(r, HttpReply) and r.status == 200 for r in results), results
    assert [c.tokens for c in server.connections] == [[f"rt{i}" for i in range(5)]]


def test_deadline_ends_a_trickle_on_a_reused_connection(server: KeepAliveServer) -> None:
    """The connection was opened by an earlier exchange, so nothing of this one's connect phase is left to hook:
    the deadline is kept by the socket operations themselves. Without that, each trickled byte would restart
    httpx's read timeout and the server, not the client, would end the exchange after `GIVE_UP` seconds."""
    with client() as http:
        first = send(http, _post(server.url, "rt0"), budget=5.0)
        late = send(http, _post(server.url, "trickle"), budget=2.0)
    assert isinstance(first, HttpReply), first
    assert isinstance(late, Ambiguous) and "deadline" in late.reason, late
    assert [c.tokens for c in server.connections] == [["rt0", "trickle"]]
    assert _wait_for_hang_up(server).hung_up_on_trickle


@pytest.mark.parametrize("face", ASYNC_FACES)
def test_async_deadline_ends_a_trickle_on_a_reused_connection(server: KeepAliveServer, face: str) -> None:
    async def run() -> tuple[object, object]:
        async with async_sender(face) as asend:
            return await asend(_post(server.url, "rt0"), 5.0), await asend(_post(server.url, "trickle"), 2.0)

    first, late = asyncio.run(run())
    assert isinstance(first, HttpReply), first
    assert isinstance(late, Ambiguous) and "deadline" in late.reason, late
    assert [c.tokens for c in server.connections] == [["rt0", "trickle"]]
    assert _wait_for_hang_up(server).hung_up_on_trickle


def test_an_answer_that_arrived_while_the_sender_was_held_past_its_deadline_is_read(server: KeepAliveServer) -> None:
    """A process stopped (SIGSTOP, a long GC pause, a starved VM) after the request went out comes back past its
    deadline with the whole answer in its socket buffer. That answer may carry the only copy of a rotated
    refresh token, so it is read: past the deadline a read no longer waits, but it takes what already arrived."""

    def hold(event: str, info: dict[str, object]) -> None:
        if event == "http11.receive_response_headers.started":
            time.sleep(1.5)  # the server answers at once; the answer waits in the buffer past the 1 s budget

    with client() as http:
        request = _post(server.url, "rt0")
        request.extensions["trace"] = hold
        held = send(http, request, budget=1.0)
    assert isinstance(held, HttpReply) and held.status == 200, held
    assert b'"access_token": "at"' in held.body


def test_a_connection_that_hit_its_deadline_is_not_reused(server: KeepAliveServer) -> None:
    """After a request that hit its deadline the connection is gone (it may hold half an answer): the next
    request opens a new one and succeeds."""
    with client() as http:
        late = send(http, _post(server.url, "trickle"), budget=1.5)
        after = send(http, _post(server.url, "rt1"), budget=5.0)
    assert isinstance(late, Ambiguous), late
    assert isinstance(after, HttpReply) and after.status == 200, after
    assert [c.tokens for c in server.connections] == [["trickle"], ["rt1"]]


@pytest.mark.parametrize("face", ASYNC_FACES)
def test_an_async_connection_that_hit_its_deadline_is_not_reused(server: KeepAliveServer, face: str) -> None:
    """The async faces close a connection the deadline cut off mid-answer instead of pooling it."""

    async def run() -> tuple[object, object]:
        async with async_sender(face) as asend:
            return await asend(_post(server.url, "trickle"), 1.5), await asend(_post(server.url, "rt1"), 5.0)

    late, after = asyncio.run(run())
    assert isinstance(late, Ambiguous), late
    assert isinstance(after, HttpReply) and after.status == 200, after
    assert [c.tokens for c in server.connections] == [["trickle"], ["rt1"]]


def _child_sends(http: httpx.Client, url: str, answers: multiprocessing.SimpleQueue[object]) -> None:
    result = send(http, _post(url, "child"), budget=5.0)
    answers.put(result.status if isinstance(result, HttpReply) else repr(result))


def test_a_forked_child_never_writes_into_its_parents_connection(server: KeepAliveServer) -> None:
    """A kept-alive socket inherited by fork is one TCP stream for two processes; the child opens its own."""
    fork = multiprocessing.get_context("fork")
    answers: multiprocessing.SimpleQueue[object] = fork.SimpleQueue()
    with client() as http:
        assert isinstance(send(http, _post(server.url, "parent1"), budget=5.0), HttpReply)
        child = fork.Process(target=_child_sends, args=(http, server.url, answers))
        child.start()
        child.join(30)
        assert child.exitcode == 0 and answers.get() == 200
        assert isinstance(send(http, _post(server.url, "parent2"), budget=5.0), HttpReply)
    assert sorted(c.tokens for c in server.connections) == [["child"], ["parent1", "parent2"]]
