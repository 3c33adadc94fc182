"""The two drivers of the refresh protocol: they execute steps, nothing else.

Each loop feeds step results (or store errors) back into the flow, remembers a lease the flow holds, and
releases it in ``finally`` if the flow was interrupted (an exception, a cancelled task). A flow that returns
has released its lease itself, or kept it on purpose: when the store refused the commit, releasing would only
wait out the store's timeout while the caller's new token ages. Store steps become store calls through
`grantkeeper.engine.dispatch`; the async driver awaits an `AsyncStore` (native, or a `Store` in worker threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

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


def _held_after(held: Lease | None, step: Step, reply: Any) -> Lease | None:
    if isinstance(step, ClaimGrant):
        assert isinstance(reply, Claim)
        return reply.lease or held
    if isinstance(step, StoreStep) and step.releases:
        return None
    return held


def _effect(step: Step) -> None:
    if isinstance(step, Failpoint):
        _failpoints.hit(step.name)
    elif isinstance(step, Log):
        logger.log(step.level, step.message, extra={"grantkeeper": step.evidence})


def drive(flow: Flow, *, store: Store, sender: Sender, clock: Clock) -> Refreshed:
    held: Lease | None = None
    reply: Any = None
    error: Exception | None = None
    try:
        while True:
            try:
                step = flow.send(reply) if error is None else flow.throw(error)
            except StopIteration as stop:
                held = None  # a flow that returns released its lease, or kept it on purpose (store down)
                result: Refreshed = stop.value
                return result
            reply, error = None, None
            try:
                if isinstance(step, StoreStep):
                    method, args, kwargs = store_call(step)
                    reply = getattr(store, method)(*args, **kwargs)
                elif isinstance(step, Send):
                    reply = sender.send(step.request, budget=step.budget)
                elif isinstance(step, Sleep):
                    time.sleep(step.seconds)
                elif isinstance(step, Now):
                    reply = clock.now()
                else:
                    _effect(step)
            except Exception as exc:  # into the flow, whatever it is: a failed commit must reach recovery
                error = exc
            else:
                held = _held_after(held, step, reply)
    finally:
        flow.close()
        if held is not None:
            with contextlib.suppress(GrantkeeperError):
                store.release(held)


async def drive_async(flow: Flow, *, store: AsyncStore, sender: AsyncSender, clock: Clock) -> Refreshed:
    held: Lease | None = None
    reply: Any = None
    error: Exception | None = None
    try:
        while True:
            try:
                step = flow.send(reply) if error is None else flow.throw(error)
            except StopIteration as stop:
                held = None  # a flow that returns released its lease, or kept it on purpose (store down)
                result: Refreshed = stop.value
                return result
            reply, error = None, None
            try:
                if isinstance(step, StoreStep):
                    method, args, kwargs = store_call(step)
                    reply = await getattr(store, method)(*args, **kwargs)
                elif isinstance(step, Send):
                    reply = await sender.send(step.request, budget=step.budget)
                elif isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                elif isinstance(step, Now):
                    reply = clock.now()
                else:
                    _effect(step)
            except Exception as exc:  # into the flow, whatever it is: a failed commit must reach recovery
                error = exc
            else:
                held = _held_after(held, step, reply)
    finally:
        flow.close()
        if held is not None:
            with contextlib.suppress(GrantkeeperError):
                await store.release(held)
