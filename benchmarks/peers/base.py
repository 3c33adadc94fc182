"""What every library adapter provides, and the parts the two peers share.

A `Library` runs in the parent: it creates its store, adds grants and reads back the refresh token it holds
(to check, against the simulator, whether a grant is still alive). A `Client` runs in any process (worker
processes open their own) and does the two things the scenarios ask of every library:

* `Client.token(name)`: one call of an application that needs a valid access token: get the token the way the
  library's documented pattern does (refreshing and persisting when it decides to) and make one request
  with it through requests. The request goes to `RESOURCE`, which `NullTransport` answers in-process, so
  the scenarios measure token handling, not a resource server.
* `Client.refresh(name)`: one forced refresh, persisted the way the library persists a refresh.

Failures are reported as the code the library itself gives the caller (`Client.failure_code`): grantkeeper's
error codes, the OAuth ``error`` field for the peers. Nothing here interprets them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import requests.adapters

__all__ = ["RESOURCE", "Client", "Library", "NullTransport", "SimInfo", "TokenTable", "held_name"]

#: A resource URL no request leaves the process for (see `NullTransport`).
RESOURCE_ORIGIN = "http://resource.invalid/"
RESOURCE = RESOURCE_ORIGIN + "api"


@dataclass(frozen=True)
class SimInfo:
    """How to reach the simulator's token endpoint (picklable: worker processes get it as an argument)."""

    url: str
    client_id: str
    client_secret: str

    @classmethod
    def of(cls, sim: Any) -> SimInfo:
        return cls(sim.url, sim.client_id, sim.client_secret)


class NullTransport(requests.adapters.BaseAdapter):
    """A requests transport that answers 200 in-process: the library's whole request path runs (auth hooks,
    auto-refresh, header building), only the resource server is left out."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        response = requests.Response()
        response.status_code = 200
        response.request = request
        response.url = request.url or RESOURCE
        response._content = b"{}"
        return response

    def close(self) -> None:
        """Nothing to release."""


def null_session(session: requests.Session) -> requests.Session:
    """`session` with `RESOURCE` answered in-process and ``trust_env`` off: requests otherwise reads proxy
    variables and ~/.netrc on every request (most of a loopback call's cost), and grantkeeper's own client
    does not read them either (httpx ``trust_env=False``)."""
    session.mount(RESOURCE_ORIGIN, NullTransport())
    session.trust_env = False
    return session


def bearer(response: requests.Response) -> str:
    """The access token the library put on the request (to count distinct tokens, never printed)."""
    header = response.request.headers.get("Authorization", "")
    return str(header).removeprefix("Bearer ")


def held_name(i: int) -> str:
    """The name of the memory scenario's grant `i` (the names `benchmarks.bench_scale.make_rows` loads)."""
    return f"bulk-{i:07d}"


class Client(ABC):
    @abstractmethod
    def token(self, name: str) -> str: ...

    @abstractmethod
    def refresh(self, name: str) -> None: ...

    @abstractmethod
    def failure_code(self, exc: BaseException) -> str | None:
        """The code the library reports for `exc`, or None when `exc` is not a failure it reports."""

    def diagnose(self, exc: Exception) -> str:
        """What a caller learns from `exc`: the library's code, or the exception type for anything the library
        does not report as a failure (counted, so an unexpected error shows in the results instead of ending a
        worker thread unseen)."""
        return self.failure_code(exc) or f"unexpected {type(exc).__name__}"

    @abstractmethod
    def is_dead(self, code: str) -> bool:
        """Whether the library says the grant cannot be refreshed any more (an application stops using it)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""


class Library(ABC):
    name = ""
    #: How the library is configured and used, for the report (one line per point).
    configured: tuple[str, ...] = ()

    @abstractmethod
    def create(self, root: Path, sim: Any) -> str:
        """Create this library's store under `root` for `sim`; returns its location (a URL or a path)."""

    @abstractmethod
    def add_grant(self, location: str, name: str, refresh_token: str) -> None: ...

    @abstractmethod
    def stored_refresh_token(self, location: str, name: str) -> str | None: ...

    @abstractmethod
    def client(self, location: str, sim: SimInfo) -> Client: ...

    @abstractmethod
    def hold(self, location: str, count: int) -> Sized:
        """Hold `count` grants' valid access tokens in this process the way an application using the library
        holds them (the memory scenario); returns what holds them."""


class TokenTable:
    """The peers' persistence: one SQLite row per grant holding the token dict the library returned, as JSON.

    The durability matches grantkeeper's SQLite store (WAL, ``synchronous=FULL``); one connection per thread
    (sqlite3 connections are not shared across threads); a 30 s busy timeout so writers queue, not fail.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()

    @classmethod
    def create(cls, path: Path) -> str:
        table = cls(str(path))
        table._conn().execute("CREATE TABLE tokens (name TEXT PRIMARY KEY, refresh_token TEXT, token TEXT NOT NULL)")
        return str(path)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            self._local.conn = conn
        return conn

    def insert(self, name: str, token: dict[str, Any]) -> None:
        self._conn().execute(
            "INSERT INTO tokens (name, refresh_token, token) VALUES (?, ?, ?)",
            (name, token.get("refresh_token"), json.dumps(token)),
        )

    def load(self, name: str) -> dict[str, Any]:
        row = self._conn().execute("SELECT token FROM tokens WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise KeyError(name)
        token: dict[str, Any] = json.loads(row[0])
        return token

    def refresh_token(self, name: str) -> str | None:
        row = self._conn().execute("SELECT refresh_token FROM tokens WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def save(self, name: str, token: dict[str, Any], *, replacing: str | None = None) -> None:
        """Durably store `token` for `name`; with `replacing`, only over the row holding that refresh token
        (Authlib's documented ``update_token`` finds the row by the old refresh token)."""
        values = (token.get("refresh_token"), json.dumps(dict(token)), name)
        if replacing is None:
            self._conn().execute("UPDATE tokens SET refresh_token = ?, token = ? WHERE name = ?", values)
        else:
            self._conn().execute(
                "UPDATE tokens SET refresh_token = ?, token = ? WHERE name = ? AND refresh_token = ?",
                (*values, replacing),
            )

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def first_token(refresh_token: str) -> dict[str, Any]:
    """The token a peer's store starts with: the refresh token of a new grant and an already expired access
    token, so the first call refreshes (grantkeeper's imported grants start the same way). The access token
    must not be empty: oauthlib rejects an empty one before it looks at the expiry."""
    return {"access_token": "expired", "token_type": "Bearer", "refresh_token": refresh_token, "expires_at": 1}
