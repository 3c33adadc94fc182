"""One wall-clock deadline for the whole token exchange, shorter than the lease (issue 17, item 15).

`TrickleServer` answers a token request with a status line and then one header byte per second, forever (until
the client hangs up, or it gives up after `give_up` seconds). httpx's per-phase timeouts never fire on it: each
byte restarts the read timeout. The tests prove, from the server's side, that the exchange is ended by the
client at the deadline, that the lease is held by the sender for the whole of every exchange, and that no two
requests carrying the same refresh token are ever open at once, for `Keeper` and `AsyncKeeper`.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from grantkeeper import AsyncKeeper, GrantkeeperError, Keeper, Provider, ProviderUnavailable, RefreshPolicy, Secret
from grantkeeper.model import AttemptState
from grantkeeper.stores import open_store
from grantkeeper.tokens.transport import Ambiguous, Network, NotSent, client, send
from tests.helpers import accept_forever, read_form_request
from tests.tokens.faces import ASYNC_FACES, async_sender

#: The deadline (request_timeout) is twice the byte interval: a per-read timeout alone would never fire.
POLICY = RefreshPolicy(lease_ttl=5.0, request_timeout=2.0, wait_timeout=60.0, backoff_base=0.01, backoff_cap=0.05,
                       deadline=30.0, max_tries=2, adopt_after=0.0)  # fmt: skip
INTERVAL = 1.0


@dataclass
class Exchange:
    token: str
    opened: float
    closed: float | None = None
    ended_by_client: bool = False


@dataclass
class TrickleServer:
    give_up: float = 15.0
    exchanges: list[Exchange] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/token"
        self.opened = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        accept_forever(self._listener, self._answer)

    def _answer(self, conn: socket.socket) -> None:
        with contextlib.closing(conn), contextlib.suppress(OSError):  # a client reset while reading the request
            request = read_form_request(conn)
            if request is None:
                return
            token = request[0]["refresh_token"]
            exchange = Exchange(token, time.monotonic())
            with self.lock:
                self.exchanges.append(exchange)
            self.opened.set()
            conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nX-Pad: ")
            while time.monotonic() - exchange.opened < self.give_up:
                readable, _, _ = select.select([conn], [], [], INTERVAL)
                if readable:
                    with contextlib.suppress(OSError):
                        if conn.recv(1):
                            continue
                    exchange.closed, exchange.ended_by_client = time.monotonic(), True
                    return
                try:
                    conn.sendall(b"a")
                except OSError:
                    exchange.closed, exchange.ended_by_client = time.monotonic(), True
                    return
            with contextlib.suppress(OSError):
                conn.sendall(b"\r\nContent-Length: 0\r\n\r\n")
            exchange.closed = time.monotonic()

    def close(self) -> None:
        self._listener.close()


@dataclass
class LeaseWatch:
    """Polls the grant's lease holder from its own store connection: [(monotonic time, worker or None)]."""

    url: str
    seen: list[tuple[float, str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        store = open_store(self.url)
        try:
            while not self._stop.is_set():
                holder = store.lease_holder("g", now=time.time())
                self.seen.append((time.monotonic(), holder.worker if holder else None))
                self._stop.wait(0.05)
        finally:
            store.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def server() -> Iterator[TrickleServer]:
    s = TrickleServer()
    yield s
    s.close()


def _refresher(kind: str, url: str, worker: str) -> Callable[[], object]:
    """A call that refreshes grant g once with its own keeper, returning the grant or the error."""

    def sync() -> object:
        with Keeper.open(url, policy=POLICY, worker=worker) as keeper:
            try:
                return keeper.refresh("g", force=True)
            except GrantkeeperError as exc:
                return exc

    async def run_async() -> object:
        async with await AsyncKeeper.open(url, policy=POLICY, worker=worker) as keeper:
            try:
                return await keeper.refresh("g", force=True)
            except GrantkeeperError as exc:
                return exc

    return sync if kind == "sync" else lambda: asyncio.run(run_async())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_trickling_response_ends_at_the_deadline_under_a_held_lease(
    kind: str, server: TrickleServer, sqlite_url: str
) -> None:
    with Keeper.open(sqlite_url) as keeper:
        keeper.add_provider(Provider(name="sim", token_url=server.url, client_id="c", client_secret=Secret("s")))
        keeper.import_grant("g", provider="sim", refresh_token="rt-" + "x" * 30)
    watch = LeaseWatch(sqlite_url)
    outcomes: dict[str, object] = {}

    def run(worker: str) -> None:
        outcomes[worker] = _refresher(kind, sqlite_url, worker)()

    first = threading.Thread(target=run, args=("worker-a",))
    first.start()
    assert server.opened.wait(30)
    second = threading.Thread(target=run, args=("worker-b",))  # waits on the lease, then takes its turn
    second.start()
    first.join(120)
    second.join(120)
    watch.stop()

    exchanges = list(server.exchanges)
    assert exchanges
    for i, a in enumerate(exchanges):
        for b in exchanges[i + 1 :]:
            assert a.token != b.token or a.closed <= b.opened or b.closed <= a.opened, (a, b)  # type: ignore[operator]
    for e in exchanges:
        holders = {worker for at, worker in watch.seen if e.opened <= at <= e.closed}  # type: ignore[operator]
        assert len(holders) == 1 and None not in holders, (e, holders)  # one live lease for the whole exchange
    assert all(e.ended_by_client for e in exchanges), exchanges  # the client hung up at its deadline
    assert isinstance(outcomes["worker-a"], ProviderUnavailable), outcomes
    with Keeper.open(sqlite_url) as keeper:
        states = {a.state for a in keeper.history("g")}
    assert AttemptState.AMBIGUOUS in states


@pytest.mark.parametrize("kind", ["sync", *ASYNC_FACES])
def test_send_classifies_the_deadline(kind: str, server: TrickleServer) -> None:
    """The deadline passed after the request was written: Ambiguous (it may have been received)."""
    request = httpx.Request("POST", server.url, data={"refresh_token": "rt"})
    if kind == "sync":
        with client() as http:
            result = send(http, request, budget=1.5)
    else:

        async def run() -> object:
            async with async_sender(kind) as asend:
                return await asend(request, 1.5)

        result = asyncio.run(run())
    assert isinstance(result, Ambiguous) and "deadline" in result.reason, result
    assert not isinstance(result, NotSent)
    exchange = server.exchanges[0]
    for _ in range(100):  # the server notices the hang-up on its next select
        if exchange.closed is not None:
            break
        time.sleep(0.05)
    assert exchange.ended_by_client


@pytest.mark.parametrize("kind", ["sync", *ASYNC_FACES])
def test_deadline_before_the_request_is_written_is_not_sent(kind: str) -> None:
    """A proxy that accepts the connection and never answers CONNECT: nothing of the token request left, so the
    deadline's verdict is NotSent (retryable, the token unspent), not Ambiguous."""
    silent = socket.create_server(("127.0.0.1", 0))
    proxy = f"http://127.0.0.1:{silent.getsockname()[1]}"
    request = httpx.Request("POST", "https://auth.example.com/token", data={"refresh_token": "rt"})
    try:
        if kind == "sync":
            with client(Network(proxy=proxy)) as http:
                result = send(http, request, budget=1.5)
        else:

            async def run() -> object:
                async with async_sender(kind, Network(proxy=proxy)) as asend:
                    return await asend(request, 1.5)

            result = asyncio.run(run())
    finally:
        silent.close()
    assert isinstance(result, NotSent) and "not written" in result.reason, result
