"""`ProxyTargets`: where the proxy sends a grant's requests (its provider, and that provider's API base URL).

Both come from the store, which an operator changes with ``grantkeeper provider add --api-base-url`` (or by
deleting and importing the grant again). Read per request, they cost a trip to a worker thread and a store read
on every proxied request, more than the rest of the route. On SQLite they are kept instead, each with the value
the store's change probe (``PRAGMA data_version``, `SQLiteStore.change_probe`) had just before the read, and used
only while the probe still returns that value: any commit to the store since, by any process, sends the next
request back to the store, so a changed base URL is followed by the very next request, as before. Other stores'
probes do not see every write (PostgreSQL's hears only API-key changes), so there the targets are read on every
request. Use it from one event loop's thread only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from grantkeeper.model import Provider
from grantkeeper.stores import SQLStore
from grantkeeper.stores.sqlite import SQLiteStore

__all__ = ["ProxyTargets"]


class ProxyTargets:
    def __init__(self, store: SQLStore) -> None:
        self._store = store
        self._probe: Callable[[], object] | None = store.change_probe() if isinstance(store, SQLiteStore) else None
        # grant -> (the probe's value just before the read, the grant's provider). Bounded by the grants asked for
        # that exist (an unknown grant raises, and nothing is kept for it).
        self._seen: dict[str, tuple[object, Provider]] = {}
        self.reads = 0  # store reads made, for tests

    async def provider(self, name: str) -> Provider:
        """The provider of grant `name` as the store holds it now (`UnknownGrant` if there is no such grant)."""
        if self._probe is None:
            return await self._read(name)
        version = self._probe()  # before the read: a commit after this point changes the next probe's value
        kept = self._seen.get(name)
        if kept is not None and kept[0] == version:
            return kept[1]
        self._seen.pop(name, None)
        provider = await self._read(name)
        self._seen[name] = (version, provider)
        return provider

    async def _read(self, name: str) -> Provider:
        self.reads += 1
        return (await asyncio.to_thread(self._store.get_grant_and_provider, name))[1]
