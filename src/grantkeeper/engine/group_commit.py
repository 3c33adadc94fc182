"""Group commit: many concurrent refreshes share their store transactions.

`GroupCommit` is an `AsyncStore` for the async driver (`drive_async`) that runs the very same refresh flows. The
transactions of a refresh that write (the claim with its attempt record, the commit, a finish, a release) are
queued instead of run one by one; one flusher runs whatever is queued as one store transaction
(`SQLStore.perform_batch`: one durable commit for all, a failed call rolled back alone; `store_batch`), and
hands each caller its own result or error. While a batch commits, the next one fills: no timer, no added
latency, and batches grow exactly as fast as the store is slow (the leader/follower group commit of databases).

With `flushers` > 1, up to that many batches are in flight at once (each its own transaction): worth it where
the store runs transactions side by side and a batch waits on round trips (PostgreSQL), not where writers take
turns anyway (SQLite). Each batch then runs its calls in grant order, so two batches never wait on each other's
row locks.

Nothing about a refresh changes but the number of commits: every claim is durable before its request is sent,
every successor is durable before its caller hears of it, and a call that fails (a generation conflict) fails
alone. Reads, waits and everything else go straight to the store.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from grantkeeper.engine.ports import AsyncStore

__all__ = ["BATCHED", "Batch", "GroupCommit", "store_batch"]

#: The store transactions that join batches (engine.dispatch names them; each is one transaction that writes).
BATCHED = frozenset({"claim", "record_attempt", "commit", "finish", "release"})

Call = tuple[str, tuple[Any, ...], dict[str, Any]]
#: Runs calls as one transaction; a failed call's place holds an object with an ``error`` attribute.
Batch = Callable[[list[Call]], Awaitable[list[Any]]]


def store_batch(store: Any) -> Batch:
    """How `store` (an `SQLStore`) runs a batch from the event loop: its own `perform_batch_async` where it has one
    (SQLite: statements on the loop, only waits in its batch thread), else its `perform_batch` in a worker thread
    (PostgreSQL's statements are round trips)."""
    native: Batch | None = getattr(store, "perform_batch_async", None)
    if native is not None:
        return native

    async def threaded_batch(calls: list[Call]) -> list[Any]:
        return await asyncio.to_thread(store.perform_batch, calls)

    return threaded_batch


class GroupCommit:
    """`store` with its writing transactions run in shared batches of at most `most` calls by `batch`, at most
    `flushers` batches at once."""

    def __init__(self, store: AsyncStore, batch: Batch, *, most: int = 256, flushers: int = 1) -> None:
        if flushers < 1:
            raise ValueError("flushers must be at least 1")
        self.store = store
        self._batch = batch
        self._most = most
        self._queue: list[tuple[Call, asyncio.Future[Any]]] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self._most_flushers = flushers
        self._releases: set[asyncio.Task[Any]] = set()
        #: Sizes of the batches run so far (for metrics and tests).
        self.sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        if name in BATCHED:  # a partial of a coroutine function: `threaded` sees an AsyncStore
            return functools.partial(self._queue_call, name)
        return getattr(self.store, name)

    async def close(self) -> None:
        """Nothing to close: the store outlives its batches, and whoever opened it closes it."""

    async def _queue_call(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        return await self._queued((name, args, kwargs))

    async def _queued(self, call: Call) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((call, future))
        # Counted by done(), not by membership: a flusher that just ended leaves the set only when its done
        # callbacks run, and a flow woken by its last batch may queue a call before that.
        if sum(not flusher.done() for flusher in self._flushers) < self._most_flushers:
            flusher = asyncio.create_task(self._flush(), name="grantkeeper-group-commit")
            self._flushers.add(flusher)
            flusher.add_done_callback(self._flushers.discard)
        # Shielded: a caller cancelled mid-batch must not tear the batch down for the others; `_release_unwanted`
        # gives back a lease its claim took after the caller left.
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(lambda done: self._release_unwanted(call, done))
            raise

    async def _flush(self) -> None:
        while self._queue:
            taken, self._queue = self._queue[: self._most], self._queue[self._most :]
            if self._most_flushers > 1:
                # Batches in flight at once take their grants' row locks in one order (a stable sort keeps one
                # grant's calls in theirs), so two of them never wait on each other.
                taken.sort(key=_grant_of)
            self.sizes.append(len(taken))
            try:
                results = await self._batch([call for call, _ in taken])
            except Exception as exc:  # the shared transaction failed: none of its calls happened
                for _, future in taken:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(taken, results, strict=True):
                if future.done():
                    continue
                error = getattr(result, "error", None)
                if isinstance(error, BaseException):
                    future.set_exception(error)
                else:
                    future.set_result(result)

    def _release_unwanted(self, call: Call, done: asyncio.Future[Any]) -> None:
        if call[0] != "claim" or done.cancelled() or done.exception() is not None:
            return
        lease = getattr(done.result(), "lease", None)
        if lease is not None:
            task = asyncio.ensure_future(self._queued(("release", (lease,), {})))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)


def _grant_of(queued: tuple[Call, asyncio.Future[Any]]) -> str:
    """The grant a batched call writes: ``claim(name, ...)``, or the grant of the lease the others take."""
    first = queued[0][1][0]
    return first if isinstance(first, str) else str(getattr(first, "grant", ""))
