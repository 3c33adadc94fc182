"""The async senders the transport suites run against: httpx (`transport.asend` on `async_client`) and aiohttp
(`aiohttp_transport.asend` on `aiohttp_transport.session`). Each promises the same exchange: one deadline, no
redirects, no cookies, the body cap, `NotSent` only when nothing can have left."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx

from grantkeeper.model.exchange import SendResult
from grantkeeper.tokens import aiohttp_transport, transport
from grantkeeper.tokens.transport import Network

#: pytest ids of the async faces.
ASYNC_FACES = ["httpx", "aiohttp"]

Send = Callable[[httpx.Request, float], Awaitable[SendResult]]


@contextlib.asynccontextmanager
async def async_sender(face: str, network: Network | None = None) -> AsyncIterator[Send]:
    """``send(request, budget)`` on one client of `face` (kept for the block: connections are reused)."""
    if face == "httpx":
        async with transport.async_client(network) as http:
            yield lambda request, budget: transport.asend(http, request, budget=budget)
    else:
        async with aiohttp_transport.session() as session:
            yield lambda request, budget: aiohttp_transport.asend(session, request, budget=budget, network=network)
