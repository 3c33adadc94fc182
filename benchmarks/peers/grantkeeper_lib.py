"""grantkeeper as an application uses it: one `Keeper` per process on an SQLite store, ``access_token(name)``
before each request, ``refresh(name, force=True)`` for a forced refresh."""

from __future__ import annotations

import threading
from collections.abc import Sized
from pathlib import Path
from typing import Any

import requests

from benchmarks._common import sim_provider
from benchmarks.peers.base import RESOURCE, Client, Library, SimInfo, held_name, null_session
from grantkeeper import (
    GrantkeeperError,
    Keeper,
    LostInFlight,
    NeedsReauth,
    RefreshPolicy,
    ReuseDetected,
    RevokedOrExpired,
)

__all__ = ["GrantkeeperClient", "GrantkeeperLibrary"]

PROVIDER = "sim"
#: The codes of the errors that say the grant needs re-consent (an application stops using it).
DEAD = frozenset(cls.code for cls in (NeedsReauth, RevokedOrExpired, LostInFlight, ReuseDetected))


class GrantkeeperClient(Client):
    def __init__(self, url: str, policy: RefreshPolicy | None) -> None:
        self.keeper = Keeper.open(url, **({"policy": policy} if policy is not None else {}))
        self._local = threading.local()

    def _http(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "http", None)
        if session is None:
            session = self._local.http = null_session(requests.Session())
        return session

    def token(self, name: str) -> str:
        token = self.keeper.access_token(name)
        self._http().get(RESOURCE, headers={"Authorization": f"Bearer {token}"})
        return token

    def refresh(self, name: str) -> None:
        self.keeper.refresh(name, force=True)

    def failure_code(self, exc: BaseException) -> str | None:
        return exc.code if isinstance(exc, GrantkeeperError) else None

    def is_dead(self, code: str) -> bool:
        return code in DEAD

    def close(self) -> None:
        self.keeper.close()


class GrantkeeperLibrary(Library):
    name = "grantkeeper"
    configured = (
        "Keeper.open('sqlite://...') per process (WAL, synchronous=FULL); provider rotation=always, "
        "reuse_grace=0, default skew (capped at half the token lifetime)",
        "per call: keeper.access_token(name), then the request with it; forced refresh: "
        "keeper.refresh(name, force=True)",
        "crash scenario only: the killed workers run RefreshPolicy(lease_ttl=1.5, request_timeout=0.25) so a "
        "killed holder's lease expires soon; the recovering worker waits for it (no peer has a lease to wait for)",
    )

    def __init__(self, policy: dict[str, float] | None = None) -> None:
        self.policy = RefreshPolicy(**policy) if policy else None

    def create(self, root: Path, sim: Any) -> str:
        url = f"sqlite://{root / 'grantkeeper.db'}"
        with Keeper.open(url) as keeper:
            keeper.add_provider(sim_provider(sim, PROVIDER))
        return url

    def add_grant(self, location: str, name: str, refresh_token: str) -> None:
        with Keeper.open(location) as keeper:
            keeper.import_grant(name, provider=PROVIDER, refresh_token=refresh_token)

    def stored_refresh_token(self, location: str, name: str) -> str | None:
        with Keeper.open(location) as keeper:
            secret = keeper.store.get_grant(name).refresh_token
        return secret.reveal() if secret is not None else None

    def client(self, location: str, sim: SimInfo) -> Client:
        return GrantkeeperClient(location, self.policy)

    def hold(self, location: str, count: int) -> Sized:
        """A keeper whose cache holds `count` access tokens: ``access_token`` for each of the first `count`
        grants of a store loaded with valid tokens (benchmarks.peers.memory loads it)."""
        keeper = Keeper.open(location)
        for i in range(count):
            keeper.access_token(held_name(i))  # raises if any would need a refresh: the simulator is gone
        return range(count)
