"""Redaction for httpx: event hooks and a logging transport wrapper for your own clients.

Both log to the ``grantkeeper.http`` logger at DEBUG, with credentials removed from the URL and headers
(bodies are never logged)::

    from grantkeeper.redact.httpx import event_hooks, RedactingLogTransport

    client = httpx.Client(event_hooks=event_hooks())                    # or:
    client = httpx.Client(transport=RedactingLogTransport(httpx.HTTPTransport()))
    aclient = httpx.AsyncClient(event_hooks=async_event_hooks())       # or AsyncRedactingLogTransport
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from grantkeeper.redact._core import REDACTED, is_sensitive_key, scrub_text

__all__ = [
    "AsyncRedactingLogTransport",
    "RedactingLogTransport",
    "async_event_hooks",
    "event_hooks",
    "safe_headers",
    "safe_url",
]

logger = logging.getLogger("grantkeeper.http")


def safe_url(url: httpx.URL | str) -> str:
    """The URL without userinfo password and with sensitive query parameters redacted."""
    parsed = httpx.URL(url)
    if parsed.password:
        parsed = parsed.copy_with(password=REDACTED)
    return scrub_text(str(parsed))


def safe_headers(headers: httpx.Headers) -> dict[str, str]:
    """Header names and values, with sensitive headers' values replaced and the rest scrubbed."""
    return {name: REDACTED if is_sensitive_key(name) else scrub_text(value) for name, value in headers.multi_items()}


def _log_request(request: httpx.Request) -> None:
    logger.debug("http request: %s %s headers=%s", request.method, safe_url(request.url), safe_headers(request.headers))


def _log_response(response: httpx.Response) -> None:
    request = response.request
    logger.debug(
        "http response: %s %s -> %s headers=%s",
        request.method, safe_url(request.url), response.status_code, safe_headers(response.headers),
    )  # fmt: skip


def event_hooks() -> dict[str, list[Callable[[Any], Any]]]:
    """``event_hooks=`` for `httpx.Client`: log each request and response, redacted."""
    return {"request": [_log_request], "response": [_log_response]}


async def _alog_request(request: httpx.Request) -> None:
    _log_request(request)


async def _alog_response(response: httpx.Response) -> None:
    _log_response(response)


def async_event_hooks() -> dict[str, list[Callable[[Any], Awaitable[None]]]]:
    """``event_hooks=`` for `httpx.AsyncClient`."""
    return {"request": [_alog_request], "response": [_alog_response]}


def _log_failure(request: httpx.Request, exc: Exception) -> None:
    logger.debug("http error: %s %s: %s: %s", request.method, safe_url(request.url), type(exc).__name__,
                 scrub_text(str(exc)))  # fmt: skip


def _answered(request: httpx.Request, response: httpx.Response) -> httpx.Response:
    response.request = request  # a bare transport's response does not know its request yet
    _log_response(response)
    return response


class RedactingLogTransport(httpx.BaseTransport):
    """Wraps a transport and logs every exchange (and transport error) through it, redacted."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        _log_request(request)
        try:
            return _answered(request, self._inner.handle_request(request))
        except Exception as exc:
            _log_failure(request, exc)
            raise

    def close(self) -> None:
        self._inner.close()


class AsyncRedactingLogTransport(httpx.AsyncBaseTransport):
    """The `httpx.AsyncClient` twin of `RedactingLogTransport`."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        _log_request(request)
        try:
            return _answered(request, await self._inner.handle_async_request(request))
        except Exception as exc:
            _log_failure(request, exc)
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()
