"""Send one token request and turn what happened into a value the protocol can classify.

The split that matters for "spend once" (I2): `NotSent` means the refresh token cannot have reached the
provider (connect failed); `Ambiguous` means it may have (timeout or reset after the request was written).
The sync and async senders differ only in ``await``; the exception mapping is shared.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TypeAlias

import httpx

from grantkeeper._exceptions import sanitize_provider_text
from grantkeeper.tokens.response import MAX_BODY_BYTES, HttpReply

__all__ = ["Ambiguous", "NotSent", "SendResult", "asend", "map_transport_error", "send"]

_KEPT_HEADERS = ("content-type", "retry-after", "www-authenticate")


@dataclass(frozen=True, slots=True)
class NotSent:
    reason: str


@dataclass(frozen=True, slots=True)
class Ambiguous:
    reason: str


SendResult: TypeAlias = HttpReply | NotSent | Ambiguous


def map_transport_error(exc: httpx.TransportError) -> NotSent | Ambiguous:
    """Most specific first: connect-phase failures are provably unsent; everything later is ambiguous."""
    reason = f"{type(exc).__name__}: {sanitize_provider_text(exc, 120)}"
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout | httpx.UnsupportedProtocol):
        return NotSent(reason)
    return Ambiguous(reason)


def _reply(response: httpx.Response, body: bytearray, truncated: bool) -> HttpReply:
    headers = {name: response.headers[name] for name in _KEPT_HEADERS if name in response.headers}
    return HttpReply(response.status_code, headers, bytes(body), truncated)


def _bound(request: httpx.Request, budget: float) -> float:
    """Every phase of this request waits at most `budget`; returns the deadline for reading the body."""
    request.extensions["timeout"] = httpx.Timeout(budget).as_dict()
    return time.monotonic() + budget


def _overdue(deadline: float) -> Ambiguous | None:
    # A server dripping its body slowly must not hold the request past the lease (DESIGN: lease > request).
    return Ambiguous("response not complete within the request budget") if time.monotonic() > deadline else None


def send(client: httpx.Client, request: httpx.Request, *, budget: float) -> SendResult:
    body = bytearray()
    deadline = _bound(request, budget)
    try:
        response = client.send(request, stream=True)
        try:
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    return _reply(response, body[:0], truncated=True)
                if late := _overdue(deadline):
                    return late
        finally:
            response.close()
    except httpx.TransportError as exc:
        return map_transport_error(exc)
    return _reply(response, body, truncated=False)


async def asend(client: httpx.AsyncClient, request: httpx.Request, *, budget: float) -> SendResult:
    body = bytearray()
    deadline = _bound(request, budget)
    try:
        response = await client.send(request, stream=True)
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    return _reply(response, body[:0], truncated=True)
                if late := _overdue(deadline):
                    return late
        finally:
            await response.aclose()
    except httpx.TransportError as exc:
        return map_transport_error(exc)
    return _reply(response, body, truncated=False)
