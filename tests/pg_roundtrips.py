"""Count PostgreSQL round trips: a TCP relay on 127.0.0.1 between the client and the server that reads the
client's side of the protocol.

A round trip is a point where the client asks the server to answer now and waits for it: a simple query
(``Q``: psycopg's BEGIN and COMMIT outside pipeline mode), a ``Sync`` (``S``: the end of every extended-protocol
statement, or of a pipeline's batch) or a ``Flush`` (``H``: a pipeline asking for the results so far); several of
them sent before the server speaks again are one round trip. Statements sent in one batch before such a point
share its round trip, which is what pipeline mode is for. Connections whose startup message names
``application_name`` in `ignored` (the store's liveness session) are counted apart, so a measurement reads the
pool's connections only.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

__all__ = ["RoundTripCounter", "counting_url"]


_WAITS = frozenset(b"QSH")
_SSL_OR_GSS = (80877103, 80877104)


class _Pair:
    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.buffer = b""  # the client's bytes not yet parsed into whole messages
        self.started = False  # past the startup message (messages are typed from then on)
        self.ignored = False
        self.asked = False  # the client has asked for an answer since the server last spoke

    def waits(self, data: bytes, ignored_names: tuple[bytes, ...]) -> int:
        """Parse the client's bytes; how many of the whole messages in them make the client wait."""
        self.buffer += data
        waits = 0
        while True:
            if not self.started:
                if len(self.buffer) < 8:
                    return waits
                length, code = struct.unpack("!ii", self.buffer[:8])
                if len(self.buffer) < length:
                    return waits
                message, self.buffer = self.buffer[:length], self.buffer[length:]
                if code not in _SSL_OR_GSS:
                    self.started = True
                    self.ignored = any(name in message for name in ignored_names)
                continue
            if len(self.buffer) < 5:
                return waits
            (length,) = struct.unpack("!i", self.buffer[1:5])
            if len(self.buffer) < 1 + length:
                return waits
            kind, self.buffer = self.buffer[0], self.buffer[1 + length :]
            waits += kind in _WAITS


class RoundTripCounter:
    """Relay connections to ``host:port`` and count client turns (see the module docstring)."""

    def __init__(self, host: str, port: int, *, ignored: tuple[bytes, ...] = (b"grantkeeper liveness",)) -> None:
        self._target = (host, port)
        self._ignored = ignored
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._turns = 0
        self._ignored_turns = 0
        self._stop = False
        self._pairs: list[_Pair] = []
        self._thread = threading.Thread(target=self._run, name="pg-roundtrips", daemon=True)
        self._thread.start()

    @property
    def turns(self) -> int:
        """Round trips counted on the counted connections since the last `reset`."""
        with self._lock:
            return self._turns

    @property
    def ignored_turns(self) -> int:
        with self._lock:
            return self._ignored_turns

    def reset(self) -> None:
        with self._lock:
            self._turns = 0
            self._ignored_turns = 0

    def _run(self) -> None:
        while not self._stop:
            for key, _ in self._selector.select(timeout=0.1):
                if key.data is None:
                    self._accept()
                    continue
                pair, from_client = key.data
                self._relay(pair, from_client)

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        server = socket.create_connection(self._target)
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(client, server)
        self._pairs.append(pair)
        self._selector.register(client, selectors.EVENT_READ, (pair, True))
        self._selector.register(server, selectors.EVENT_READ, (pair, False))

    def _relay(self, pair: _Pair, from_client: bool) -> None:
        source, sink = (pair.client, pair.server) if from_client else (pair.server, pair.client)
        try:
            data = source.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._close(pair)
            return
        if from_client:
            if pair.waits(data, self._ignored) and not pair.asked:
                pair.asked = True
                with self._lock:
                    if pair.ignored:
                        self._ignored_turns += 1
                    else:
                        self._turns += 1
        else:
            pair.asked = False
        with contextlib.suppress(OSError):
            sink.sendall(data)

    def _close(self, pair: _Pair) -> None:
        for sock in (pair.client, pair.server):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            sock.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=3)
        for pair in self._pairs:
            self._close(pair)
        self._selector.close()
        self._listener.close()


def counting_url(url: str, counter: RoundTripCounter) -> str:
    """`url` with its host and port replaced by the counter's."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (userinfo + "@" if userinfo else "") + f"127.0.0.1:{counter.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@contextlib.contextmanager
def counted(url: str) -> Iterator[tuple[RoundTripCounter, str]]:
    """A counter in front of the server `url` names, and the URL that goes through it."""
    parts = urlsplit(url)
    counter = RoundTripCounter(parts.hostname or "127.0.0.1", parts.port or 5432)
    try:
        yield counter, counting_url(url, counter)
    finally:
        counter.close()
