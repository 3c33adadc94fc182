"""Crossing between the two store faces.

`ThreadedStore`: any synchronous `Store` as an `AsyncStore`, each transaction run in a worker thread (stdlib
``sqlite3`` blocks). Stores with a native async face (PostgreSQL's pool) do not need it. `blocking`: the other
way, an `AsyncStore` called from a worker thread while its event loop runs (for code that calls the store as it
goes, such as `diagnose`)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

from grantkeeper._secrets import Secret
from grantkeeper.engine.ports import AsyncStore, Store, Subscriber

__all__ = ["ThreadedStore", "blocking", "threaded"]

_PLAIN = frozenset({"fingerprint", "subscribe"})  # no I/O: called directly


class ThreadedStore:
    """Every method of the wrapped store, awaited in a worker thread; attributes pass through."""

    def __init__(self, store: Store) -> None:
        self.sync = store

    def fingerprint(self, token: Secret) -> str:
        return self.sync.fingerprint(token)

    def subscribe(self, subscriber: Subscriber) -> None:
        self.sync.subscribe(subscriber)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.sync, name)
        if name.startswith("_") or not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def call(*args: Any, **kwargs: Any) -> Awaitable[Any]:
            return asyncio.to_thread(attribute, *args, **kwargs)

        return cast(Callable[..., Awaitable[Any]], call)


def threaded(store: Store | AsyncStore) -> AsyncStore:
    """`store` as an `AsyncStore`: itself if it is one (its `claim` is a coroutine function), else in threads."""
    if asyncio.iscoroutinefunction(getattr(store, "claim", None)):
        return cast(AsyncStore, store)
    return cast(AsyncStore, ThreadedStore(cast(Store, store)))


class _LoopBound:
    """Every method of an `AsyncStore`, called from a thread other than its loop's: run on the loop, waited for."""

    def __init__(self, store: AsyncStore, loop: asyncio.AbstractEventLoop) -> None:
        self._store = store
        self._loop = loop

    def fingerprint(self, token: Secret) -> str:
        return self._store.fingerprint(token)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)
        if name.startswith("_") or not callable(method):
            return method

        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            coroutine = cast(Coroutine[Any, Any, Any], method(*args, **kwargs))
            return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

        return call


def blocking(store: AsyncStore, loop: asyncio.AbstractEventLoop) -> Store:
    """`store` as a synchronous `Store` for a worker thread, while `loop` (the store's) runs: the store a
    `ThreadedStore` wraps, else each call run on `loop` and waited for. Never call it from `loop`'s own thread."""
    if isinstance(store, ThreadedStore):
        return store.sync
    return cast(Store, _LoopBound(store, loop))
