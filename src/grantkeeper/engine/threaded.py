"""`ThreadedStore`: any synchronous `Store` as an `AsyncStore`, each transaction run in a worker thread (stdlib
``sqlite3`` blocks). Stores with a native async face (PostgreSQL's pool) do not need it."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, cast

from grantkeeper._secrets import Secret
from grantkeeper.engine.ports import AsyncStore, Store, Subscriber

__all__ = ["ThreadedStore", "threaded"]

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
