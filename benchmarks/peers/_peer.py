"""What the two peer adapters share: a token table per library, one session per (thread, grant), the token
loaded from the table for every call, and the codes their errors carry."""

from __future__ import annotations

import os
import secrets
import threading
import time
from abc import abstractmethod
from collections.abc import Sized
from pathlib import Path
from typing import Any

import requests

from benchmarks.peers.base import Client, Library, SimInfo, TokenTable, first_token, held_name

__all__ = ["PeerClient", "PeerLibrary"]

#: Both peers refuse http:// token endpoints unless told otherwise; the simulator is plain HTTP on loopback.
INSECURE_TRANSPORT = ("AUTHLIB_INSECURE_TRANSPORT", "OAUTHLIB_INSECURE_TRANSPORT")


class PeerClient(Client):
    """A peer in one process: per thread and grant, one session (requests sessions are not shared across
    threads); for every call the token is loaded from the table first, the way both libraries' documented
    web-app patterns load the user's token from storage for each request."""

    def __init__(self, table: str, sim: SimInfo) -> None:
        for variable in INSECURE_TRANSPORT:
            os.environ.setdefault(variable, "1")
        self.table = TokenTable(table)
        self.sim = sim
        self._local = threading.local()

    def session(self, name: str) -> Any:
        sessions: dict[str, Any] | None = getattr(self._local, "sessions", None)
        if sessions is None:
            sessions = self._local.sessions = {}
        session = sessions.get(name)
        if session is None:
            session = sessions[name] = self.new_session(name)
        return session

    @abstractmethod
    def new_session(self, name: str) -> requests.Session: ...

    def failure_code(self, exc: BaseException) -> str | None:
        # Both libraries put the OAuth error code on the exception they raise (Authlib: OAuthError.error,
        # oauthlib: OAuth2Error.error); a transport failure is reported by its type.
        code = getattr(exc, "error", None)
        if isinstance(code, str) and code:
            return code
        if isinstance(exc, requests.RequestException):
            return type(exc).__name__
        return None

    def is_dead(self, code: str) -> bool:
        return code == "invalid_grant"

    def close(self) -> None:
        self.table.close()


class PeerLibrary(Library):
    client_class: type[PeerClient] = PeerClient

    def client(self, location: str, sim: SimInfo) -> Client:
        return self.client_class(location, sim)

    def create(self, root: Path, sim: Any) -> str:
        return TokenTable.create(root / f"{self.name}.db")

    def add_grant(self, location: str, name: str, refresh_token: str) -> None:
        table = TokenTable(location)
        table.insert(name, first_token(refresh_token))
        table.close()

    def hold(self, location: str, count: int) -> Sized:
        """One session per grant, each holding a token dict as the library keeps it after a refresh (access and
        refresh token of the simulator's length, token type, expires_in, expires_at)."""
        # The tokens stay valid for an hour, so no session refreshes and this token endpoint is never contacted.
        client = self.client(location, SimInfo("http://127.0.0.1:9/token", "client", "secret"))
        assert isinstance(client, PeerClient)
        expires_at = int(time.time()) + 3600
        sessions = {}
        for i in range(count):
            name = held_name(i)
            session = client.new_session(name)
            session.token = {
                "access_token": secrets.token_urlsafe(32), "refresh_token": secrets.token_urlsafe(32),
                "token_type": "Bearer", "expires_in": 3600, "expires_at": expires_at,
            }  # fmt: skip
            sessions[name] = session
        return sessions

    def stored_refresh_token(self, location: str, name: str) -> str | None:
        table = TokenTable(location)
        try:
            return table.refresh_token(name)
        finally:
            table.close()
