"""send()/asend(): one token request becomes an HttpReply, NotSent or Ambiguous (the I2 split)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

from grantkeeper.protocol.answers import MAX_BODY_BYTES, HttpReply
from grantkeeper.tokens.transport import Ambiguous, NotSent, asend, map_transport_error, send

URL = "https://auth.example.com/token"
Handler = Callable[[httpx.Request], httpx.Response]


def _request() -> httpx.Request:
    return httpx.Request("POST", URL, data={"grant_type": "refresh_token", "refresh_token": "rt"})


def sync_send(handler: Handler) -> object:
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        return send(client, _request(), budget=10.0)


def async_send(handler: Handler) -> object:
    async def run() -> object:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await asend(client, _request(), budget=10.0)

    return asyncio.run(run())


SENDERS = [pytest.param(sync_send, id="sync"), pytest.param(async_send, id="async")]


# --- map_transport_error --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc_type", [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol]
)
def test_connect_phase_errors_are_not_sent(exc_type: type[httpx.TransportError]) -> None:
    """Failures before the request was written (connect, pool) map to NotSent."""
    assert isinstance(map_transport_error(exc_type("boom")), NotSent)


@pytest.mark.parametrize(
    "exc_type",
    [
        httpx.ReadTimeout,
        httpx.WriteTimeout,
        httpx.ReadError,
        httpx.WriteError,
        httpx.RemoteProtocolError,
        httpx.CloseError,
    ],
)
def test_errors_after_connect_are_ambiguous(exc_type: type[httpx.TransportError]) -> None:
    """Failures once the request may have been written (timeouts, resets, protocol errors) map to Ambiguous."""
    assert isinstance(map_transport_error(exc_type("boom")), Ambiguous)


def test_transport_error_reason_names_the_exception_type() -> None:
    """The reason names the exception class so the outcome is explainable."""
    assert "ReadTimeout" in map_transport_error(httpx.ReadTimeout("timed out")).reason


def test_transport_error_reason_is_sanitized() -> None:
    """Token-like text and control characters in an exception message do not reach the reason."""
    token = "RT-abcdefghijklmnopqrstuvwxyz0123456789"
    reason = map_transport_error(httpx.ConnectError(f"failed for {token}\r\ninjected")).reason
    assert token not in reason
    assert "\n" not in reason


# --- send / asend -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sender", SENDERS)
def test_send_returns_status_and_body(sender: Callable[[Handler], object]) -> None:
    """A normal response becomes an HttpReply with its status and full body, not truncated."""
    result = sender(lambda _request: httpx.Response(400, content=b'{"error":"invalid_grant"}'))
    assert result == HttpReply(400, {}, b'{"error":"invalid_grant"}', False)


@pytest.mark.parametrize("sender", SENDERS)
def test_send_delivers_the_request_it_was_given(sender: Callable[[Handler], object]) -> None:
    """The provider receives the request's method, URL and form body unchanged."""
    seen: list[tuple[str, str, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, str(request.url), request.read()))
        return httpx.Response(200)

    sender(handler)
    assert seen == [("POST", URL, b"grant_type=refresh_token&refresh_token=rt")]


@pytest.mark.parametrize("sender", SENDERS)
def test_send_keeps_only_relevant_headers_in_lower_case(sender: Callable[[Handler], object]) -> None:
    """Only content-type, retry-after and www-authenticate are kept, under lower-case names."""
    headers = [
        ("Content-Type", "application/json"),
        ("RETRY-AFTER", "30"),
        ("WWW-Authenticate", 'Bearer error="invalid_token"'),
        ("Set-Cookie", "session=secret"),
        ("X-Request-Id", "abc"),
    ]
    result = sender(lambda _request: httpx.Response(429, headers=headers, content=b""))
    assert isinstance(result, HttpReply)
    assert dict(result.headers) == {
        "content-type": "application/json",
        "retry-after": "30",
        "www-authenticate": 'Bearer error="invalid_token"',
    }


@pytest.mark.parametrize("sender", SENDERS)
def test_send_truncates_a_body_over_the_limit(sender: Callable[[Handler], object]) -> None:
    """A body over MAX_BODY_BYTES gives truncated=True and an empty body."""
    result = sender(lambda _request: httpx.Response(200, content=b"x" * (MAX_BODY_BYTES + 1)))
    assert isinstance(result, HttpReply)
    assert (result.status, result.truncated, result.body) == (200, True, b"")


@pytest.mark.parametrize("sender", SENDERS)
def test_send_accepts_a_body_of_exactly_the_limit(sender: Callable[[Handler], object]) -> None:
    """A body of exactly MAX_BODY_BYTES is delivered whole."""
    result = sender(lambda _request: httpx.Response(200, content=b"y" * MAX_BODY_BYTES))
    assert isinstance(result, HttpReply)
    assert (result.truncated, len(result.body)) == (False, MAX_BODY_BYTES)


CHUNK = 64 * 1024
TOTAL_CHUNKS = 1024  # 64 MiB if read whole


def test_send_stops_reading_a_streamed_body_past_the_limit() -> None:
    """send() stops consuming a streamed body soon after MAX_BODY_BYTES instead of reading it all."""
    produced: list[int] = []

    def chunks() -> Iterator[bytes]:
        for i in range(TOTAL_CHUNKS):
            produced.append(i)
            yield b"z" * CHUNK

    result = sync_send(lambda _request: httpx.Response(200, content=chunks()))
    assert isinstance(result, HttpReply)
    assert result.truncated
    assert len(produced) <= MAX_BODY_BYTES // CHUNK + 2


def test_asend_stops_reading_a_streamed_body_past_the_limit() -> None:
    """asend() stops consuming a streamed body soon after MAX_BODY_BYTES instead of reading it all."""
    produced: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(TOTAL_CHUNKS):
            produced.append(i)
            yield b"z" * CHUNK

    result = async_send(lambda _request: httpx.Response(200, content=chunks()))
    assert isinstance(result, HttpReply)
    assert result.truncated
    assert len(produced) <= MAX_BODY_BYTES // CHUNK + 2


def _raise(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


@pytest.mark.parametrize("sender", SENDERS)
def test_send_maps_connect_error_to_not_sent(sender: Callable[[Handler], object]) -> None:
    """A transport that refuses the connection gives NotSent, not an exception."""
    assert isinstance(sender(_raise(httpx.ConnectError("connection refused"))), NotSent)


@pytest.mark.parametrize("sender", SENDERS)
def test_send_maps_read_timeout_to_ambiguous(sender: Callable[[Handler], object]) -> None:
    """A read timeout after sending gives Ambiguous, not an exception."""
    assert isinstance(sender(_raise(httpx.ReadTimeout("read timed out"))), Ambiguous)


@pytest.mark.parametrize("sender", SENDERS)
def test_send_maps_a_reset_mid_body_to_ambiguous(sender: Callable[[Handler], object]) -> None:
    """A connection reset while the body streams gives Ambiguous (the provider may have spent the token)."""

    def broken() -> Iterator[bytes]:
        yield b'{"access_token": '
        raise httpx.ReadError("connection reset by peer")

    async def abroken() -> AsyncIterator[bytes]:
        yield b'{"access_token": '
        raise httpx.ReadError("connection reset by peer")

    content = broken() if sender is sync_send else abroken()
    assert isinstance(sender(lambda _request: httpx.Response(200, content=content)), Ambiguous)


def test_slow_drip_body_is_cut_off_at_the_budget() -> None:
    """A response whose body keeps trickling past the request budget ends as Ambiguous (the token was sent),
    so a slow server cannot hold a refresh past its lease."""
    import time as _time

    def chunks() -> Iterator[bytes]:
        for _ in range(50):
            _time.sleep(0.02)
            yield b" "

    with httpx.Client(transport=httpx.MockTransport(lambda _r: httpx.Response(200, content=chunks()))) as client:
        result = send(client, _request(), budget=0.1)
    assert isinstance(result, Ambiguous)
    assert "budget" in result.reason
