"""The two drivers of the refresh protocol: they execute steps, nothing else.

The bookkeeping is written once, in `_Run`: it feeds step results (or errors) back into the flow, remembers a
lease the flow holds, and releases that lease on the way out if the flow was interrupted (an exception, a
cancelled task). A flow that returns has released its lease itself, or kept it on purpose: when the store
refused the commit, releasing would only wait out the store's timeout while the caller's new token ages. What
differs is how one step is executed: `_execute` calls the `Store` and the `Sender`, `_execute_async` awaits the
`AsyncStore` (native, or a `Store` in worker threads) and the `AsyncSender`. Store steps become store calls
through `grantkeeper.engine.dispatch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any, cast

from grantkeeper import _failpoints
from grantkeeper._clock import Clock
from grantkeeper._exceptions import GrantkeeperError
from grantkeeper.engine.dispatch import store_call
from grantkeeper.engine.ports import AsyncSender, AsyncStore, Sender, Store
from grantkeeper.model import Lease
from grantkeeper.model.claims import Claim
from grantkeeper.protocol.refresh import Flow, Refreshed
from grantkeeper.protocol.steps import ClaimGrant, Failpoint, Log, Now, Send, Sleep, Step, StoreStep

__all__ = ["drive", "drive_async"]

logger = logging.getLogger("grantkeeper")


class _Run:
    """One flow being driven: what goes into it next (a reply or an error), and the lease it holds. Used as a
    context manager (``with`` by `drive`, ``async with`` by `drive_async`): on the way out it stops the flow and
    releases the lease an interrupted flow still holds, on the driver's own store face."""

    def __init__(self, flow: Flow, store: Store | AsyncStore) -> None:
        self._flow = flow
        self._store = store
        self._reply: Any = None
        self._error: Exception | None = None
        self._held: Lease | None = None
        self._result: Refreshed | None = None

    def steps(self) -> Iterator[Step]:
        """The flow's steps, each after the previous one's outcome went in, until the flow returns or raises."""
        while True:
            try:
                step = self._flow.send(self._reply) if self._error is None else self._flow.throw(self._error)
            except StopIteration as stop:
                self._held = None  # a flow that returns released its lease, or kept it on purpose (store down)
                self._result = stop.value
                return
            self._reply, self._error = None, None
            yield step

    def answered(self, step: Step, reply: Any) -> None:
        self._reply = reply
        if isinstance(step, ClaimGrant):
            assert isinstance(reply, Claim)
            self._held = reply.lease or self._held
        elif isinstance(step, StoreStep) and step.releases:
            self._held = None

    def failed(self, error: Exception) -> None:
        self._error = error

    def result(self) -> Refreshed:
        assert self._result is not None
        return self._result

    def _close(self) -> Lease | None:
        """Stop the flow; the lease it still holds (it was interrupted), to release."""
        self._flow.close()
        held, self._held = self._held, None
        return held

    def __enter__(self) -> _Run:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if (held := self._close()) is not None:
            with contextlib.suppress(GrantkeeperError):
                cast(Store, self._store).release(held)

    async def __aenter__(self) -> _Run:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if (held := self._close()) is not None:
            with contextlib.suppress(GrantkeeperError):
                await cast(AsyncStore, self._store).release(held)


def _local(step: Step) -> None:
    """The steps both drivers execute alike, in the calling thread: failpoints and logging."""
    if isinstance(step, Failpoint):
        _failpoints.hit(step.name)
    elif isinstance(step, Log):
        logger.log(step.level, step.message, extra={"grantkeeper": step.evidence})


def _execute(step: Step, store: Store, sender: Sender, clock: Clock) -> Any:
    if isinstance(step, Now):  # the most frequent step
        return clock.now()
    if isinstance(step, StoreStep):
        method, args, kwargs = store_call(step)
        return getattr(store, method)(*args, **kwargs)
    if isinstance(step, Send):
        return sender.send(step.request, budget=step.budget)
    if isinstance(step, Sleep):
        return time.sleep(step.seconds)
    return _local(step)


async def _execute_async(step: Step, store: AsyncStore, sender: AsyncSender, clock: Clock) -> Any:
    if isinstance(step, Now):  # the most frequent step
        return clock.now()
    if isinstance(step, StoreStep):
        method, args, kwargs = store_call(step)
        return await getattr(store, method)(*args, **kwargs)
    if isinstance(step, Send):
        return await sender.send(step.request, budget=step.budget)
    if isinstance(step, Sleep):
        return await asyncio.sleep(step.seconds)
    return _local(step)


def drive(flow: Flow, *, store: Store, sender: Sender, clock: Clock) -> Refreshed:
    with _Run(flow, store) as run:
        for step in run.steps():
            try:
                run.answered(step, _execute(step, store, sender, clock))
            except Exception as exc:  # into the flow, whatever it is: a failed commit must reach recovery
                run.failed(exc)
        return run.result()


async def drive_async(flow: Flow, *, store: AsyncStore, sender: AsyncSender, clock: Clock) -> Refreshed:
    async with _Run(flow, store) as run:
        for step in run.steps():
            try:
                run.answered(step, await _execute_async(step, store, sender, clock))
            except Exception as exc:  # into the flow, whatever it is: a failed commit must reach recovery
                run.failed(exc)
        return run.result()
