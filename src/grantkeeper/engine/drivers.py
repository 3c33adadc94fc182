"""The two drivers of the refresh protocol: they execute steps, nothing else.

The bookkeeping is written once, in `_Run`: it feeds step results (or errors) back into the flow, remembers a
lease the flow holds, and releases that lease on the way out if the flow was interrupted (an exception, a
cancelled task). A flow that returns has released its lease itself, or kept it on purpose: when the store
refused the commit, releasing would only wait out the store's timeout while the caller's new token ages. What
differs is how one step is executed: `_execute` calls the `Store` and the `Sender`, `_execute_async` awaits the
`AsyncStore` (native, or a `Store` in worker threads) and the `AsyncSender`. Store steps become store calls
through `grantkeeper.engine.dispatch`.

A cancelled task (``task.cancel()``, an expired ``asyncio.timeout``) stops at its next await, except in two places
where stopping would leave work half done: a claim runs to its answer (its lease is then released), and a send runs
on until the successor is durable or the refresh gives up (at most `RefreshPolicy.deadline`); then the cancellation
goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Coroutine, Iterator
from typing import Any, cast

from grantkeeper import _failpoints
from grantkeeper._clock import Clock
from grantkeeper._exceptions import GrantkeeperError
from grantkeeper.engine.dispatch import store_call
from grantkeeper.engine.ports import AsyncSender, AsyncStore, Sender, Store
from grantkeeper.model import Attempt, AttemptState, Lease
from grantkeeper.model.claims import Claim
from grantkeeper.protocol.refresh import Flow, Refreshed
from grantkeeper.protocol.steps import (
    ClaimGrant,
    Commit,
    Failpoint,
    Log,
    Now,
    SaveRecovery,
    Send,
    Sleep,
    Step,
    StoreStep,
)

__all__ = ["drive", "drive_async"]

logger = logging.getLogger("grantkeeper")
_INTERRUPTED = "interrupted before sending"


class _Run:
    """One flow being driven: what goes into it next (a reply or an error), the lease it holds, and the attempt it
    claimed while that attempt's request has not started. Used as a context manager (``with`` by `drive`,
    ``async with`` by `drive_async`): on the way out it stops the flow and releases the lease an interrupted flow
    still holds, on the driver's own store face, closing as not sent an attempt whose request never started (left
    open, it would read as possibly spent: another host would defer its own refresh for
    `RefreshPolicy.adopt_after`)."""

    def __init__(self, flow: Flow, store: Store | AsyncStore, clock: Clock) -> None:
        self._flow = flow
        self._store = store
        self._clock = clock
        self._reply: Any = None
        self._error: Exception | None = None
        self._held: Lease | None = None
        self._unsent: Attempt | None = None
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
            if isinstance(step, Send):
                self._unsent = None  # from here the token may be spent
            yield step

    def answered(self, step: Step, reply: Any) -> None:
        self._reply = reply
        if isinstance(step, ClaimGrant):
            assert isinstance(reply, Claim)
            self._held = reply.lease or self._held
            self._unsent = reply.attempt if reply.lease is not None else self._unsent
        elif isinstance(step, StoreStep) and step.releases:
            self._held = None

    def failed(self, error: Exception) -> None:
        self._error = error

    def succeeded(self) -> bool:
        """Whether the last step executed answered (no error goes into the flow)."""
        return self._error is None

    def result(self) -> Refreshed:
        assert self._result is not None
        return self._result

    def _close(self) -> tuple[Lease | None, dict[str, Any] | None]:
        """Stop the flow; the lease it still holds (it was interrupted), and `finish`'s arguments for its attempt
        if that attempt's request never started."""
        self._flow.close()
        held, unsent = self._held, self._unsent
        self._held = self._unsent = None
        if held is None or unsent is None:
            return held, None
        return held, {"attempt_id": unsent.id, "state": AttemptState.NOT_SENT, "outcome": _INTERRUPTED,
                      "now": self._clock.now()}  # fmt: skip

    def __enter__(self) -> _Run:
        return self

    def __exit__(self, *exc_info: object) -> None:
        held, unsent = self._close()
        if held is not None:
            store = cast(Store, self._store)
            with contextlib.suppress(GrantkeeperError):
                if unsent is None:
                    store.release(held)
                else:
                    store.finish(held, **unsent)

    async def __aenter__(self) -> _Run:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        held, unsent = self._close()
        if held is not None:
            store = cast(AsyncStore, self._store)
            with contextlib.suppress(GrantkeeperError):
                if unsent is None:
                    await store.release(held)
                else:
                    await store.finish(held, **unsent)


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
    with _Run(flow, store, clock) as run:
        for step in run.steps():
            try:
                run.answered(step, _execute(step, store, sender, clock))
            except Exception as exc:  # into the flow, whatever it is: a failed commit must reach recovery
                run.failed(exc)
        return run.result()


async def drive_async(flow: Flow, *, store: AsyncStore, sender: AsyncSender, clock: Clock) -> Refreshed:
    async with _Run(flow, store, clock) as run:
        steps = run.steps()
        for step in steps:
            if isinstance(step, Send):  # the token leaves: on to the successor's commit, cancelled or not
                await _past_cancellation(_spend_async(step, steps, run, store, sender, clock))
            elif isinstance(step, ClaimGrant):  # a lease the claim took must be known here, to be released
                await _past_cancellation(_take_async(step, run, store, sender, clock))
            else:
                await _take_async(step, run, store, sender, clock)
        return run.result()


async def _take_async(step: Step, run: _Run, store: AsyncStore, sender: AsyncSender, clock: Clock) -> None:
    try:
        run.answered(step, await _execute_async(step, store, sender, clock))
    except Exception as exc:  # into the flow, whatever it is: a failed commit must reach recovery
        run.failed(exc)


async def _spend_async(
    send: Send, steps: Iterator[Step], run: _Run, store: AsyncStore, sender: AsyncSender, clock: Clock
) -> None:
    """From a send until the successor is durable (committed, or kept in recovery storage) or the flow ends."""
    for step in itertools.chain((send,), steps):
        await _take_async(step, run, store, sender, clock)
        if isinstance(step, (Commit, SaveRecovery)) and run.succeeded():
            return


async def _past_cancellation(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` to its end even if the calling task is cancelled meanwhile (``task.cancel()``, an expired
    ``asyncio.timeout``), then let that cancellation go on. A refresh token on its way to the provider is spent
    whether or not the caller still waits: cut off there, the successor would be lost (I1), to be found
    ``lost_in_flight`` by the next refresh where the provider rotates without grace. A claim cut off after its
    commit would leave a lease that nobody releases: other processes would wait out its TTL."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait([task])  # a cancelled waiter leaves the task running
        except asyncio.CancelledError:
            cancelled = True
    if cancelled and not task.cancelled():
        task.exception()  # the flow logged and recorded its outcome; the caller asked to stop
        raise asyncio.CancelledError
    task.result()
