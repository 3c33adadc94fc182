"""Every face of every store for the conformance suite: the blocking stores, and the asyncio ones driven from
blocking test code (`Awaited`), so one test body checks the contract on all of them."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from grantkeeper.engine.threaded import ThreadedStore
from grantkeeper.stores import open_store
from grantkeeper.stores.postgres_async import AsyncPostgresStore

#: (store kind, face): "sync" is the blocking store itself; "async" its asyncio face (PostgreSQL's native pool, any
#: other store in worker threads through `ThreadedStore`).
FACES = (("memory", "sync"), ("sqlite", "sync"), ("postgres", "sync"), ("sqlite", "async"), ("postgres", "async"))
FACE_IDS = [f"{kind}-{face}" for kind, face in FACES]


class Awaited:
    """An asyncio store used from blocking code: each call runs on the portal's event loop, and what it returns is
    awaited there when it is awaitable. Plain attributes (``recovery``, ``retention``) pass through."""

    def __init__(self, store: Any, portal: BlockingPortal) -> None:
        self.store = store
        self._portal = portal

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.store, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._portal.call(_awaited, attribute, args, kwargs)

        return call


async def _awaited(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    result = fn(*args, **kwargs)
    return await result if inspect.isawaitable(result) else result


@contextlib.contextmanager
def store_face(url: str, face: str, *, migrate: bool = False) -> Iterator[Any]:
    """The store at `url` on `face` (created already, or by `migrate`); closed afterwards."""
    if face == "sync":
        store = open_store(url, migrate=migrate)
        try:
            yield store
        finally:
            store.close()
        return
    with start_blocking_portal() as portal:
        if url.startswith("postgresql://"):
            native = portal.call(lambda: AsyncPostgresStore.open(url, migrate=migrate))
        else:
            native = ThreadedStore(open_store(url, migrate=migrate))
        awaited = Awaited(native, portal)
        try:
            yield awaited
        finally:
            awaited.close()
