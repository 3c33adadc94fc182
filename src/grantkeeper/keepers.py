"""The public keepers: the engine's `Keeper` and `AsyncKeeper` wired to the adapters.

The engine (`grantkeeper.engine`) knows only its ports: a `Store` and a `Sender`. This module is the one place that
chooses the real ones, as httpx's `Client` fills in a default transport that its callers can replace: a store opened
from its URL (`grantkeeper.stores.open_store`), and an HTTP sender on grantkeeper's one client factory
(`grantkeeper.tokens.transport`: CA bundles, proxies, redirects off) unless the caller passes its own client.
`grantkeeper.Keeper` and `grantkeeper.AsyncKeeper` are these classes.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Self, Unpack

import httpx

from grantkeeper.engine import keeper as engine
from grantkeeper.stores import SQLStore, is_postgres, open_store
from grantkeeper.tokens import transport
from grantkeeper.tokens.sender import AsyncHttpSender, HttpSender

if TYPE_CHECKING:
    from grantkeeper.stores.postgres_async import AsyncPostgresStore

__all__ = ["DEFAULT_TIMEOUT", "AsyncKeeper", "Keeper"]

#: The default client's timeouts; each refresh also has its own deadline (`RefreshPolicy`).
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


class Keeper(engine.Keeper):
    """Thread-safe, synchronous keeper of grants.

    `http` is the client token requests go through (grantkeeper's default client if None, closed with the keeper;
    a client you pass stays yours to close). `options`: `clock`, `policy`, `worker`, `on_event`, `retention`
    (`grantkeeper.engine.keeper.KeeperOptions`).

    >>> with Keeper.open("sqlite:///var/lib/app/grants.db") as keeper:  # doctest: +SKIP
    ...     headers = {"Authorization": f"Bearer {keeper.access_token('acme')}"}
    """

    store: SQLStore

    def __init__(
        self, store: SQLStore, *, http: httpx.Client | None = None, **options: Unpack[engine.KeeperOptions]
    ) -> None:
        self._own_http = http is None
        self._http = http or transport.client(timeout=DEFAULT_TIMEOUT)
        super().__init__(store, sender=HttpSender(self._http), **options)

    @classmethod
    def open(cls, url: str, *, create: bool = True, **options: Any) -> Self:
        """Open the store at `url` and commit anything waiting in its local recovery storage."""
        keeper = cls(open_store(url, create=create), **options)
        keeper._replay_recovery()
        return keeper

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._own_http:
                self._http.close()


class AsyncKeeper(engine.AsyncKeeper):
    """Task-safe asyncio keeper of grants; the same protocol as `Keeper`, driven with ``await``.

    `http` is the client token requests go through (grantkeeper's default client if None, closed with the keeper).
    `options` as for `Keeper`.
    `store` is a blocking SQL store (run in worker threads) or PostgreSQL's native async store.
    """

    store: SQLStore | AsyncPostgresStore

    def __init__(
        self, store: SQLStore | AsyncPostgresStore, *, http: httpx.AsyncClient | None = None,
        **options: Unpack[engine.KeeperOptions],
    ) -> None:  # fmt: skip
        self._own_http = http is None
        self._http = http or transport.async_client(timeout=DEFAULT_TIMEOUT)
        super().__init__(store, sender=AsyncHttpSender(self._http), **options)

    @classmethod
    async def open(cls, url: str, *, create: bool = True, threads: bool = False, **options: Any) -> Self:
        """Open the store at `url` and commit anything waiting in its local recovery storage.

        PostgreSQL runs on psycopg_pool's AsyncConnectionPool (no worker threads) unless `threads` asks for the
        blocking SQL store in worker threads, for callers that use `store` as an `SQLStore` (`grantkeeper serve`'s
        API keys and audit trail); SQLite and memory:// always run in worker threads (stdlib ``sqlite3`` blocks)."""
        store: SQLStore | AsyncPostgresStore
        if is_postgres(url) and not threads:
            from grantkeeper.stores.postgres_async import AsyncPostgresStore  # psycopg is an optional extra

            store = await AsyncPostgresStore.open(url)
        else:
            store = await asyncio.to_thread(open_store, url, create=create)
        keeper = cls(store, **options)
        await keeper._replay_recovery()
        return keeper

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            if self._own_http:
                await self._http.aclose()
