"""The proxy of ``grantkeeper serve``: ``ANY /v1/proxy/{name}/{path}`` forwarded with the grant's token injected.

`proxy_request` sends the caller's request to the provider's ``api_base_url`` + `path` with
``Authorization: Bearer <access token>`` and streams the answer back. The caller never sees the token: not in a
header, not in an error, not in a log line. The decisions about a rejected token are the httpx bridge's
(`grantkeeper.integrations._flow.auth_steps`, ``any_401=False``): a 401 whose ``WWW-Authenticate`` carries
``error="invalid_token"`` (RFC 6750 §3.1) reports that token and re-sends once with a fresh one, if the body can
be replayed. Other 401s (no challenge, ``insufficient_scope``) go back to the caller as they are: a new token
would not cure them, and reporting would make every caller's mistake cost a refresh.

What is refused, and how (each a `ProxyError` carrying ``http_status`` for the app's RFC 9457 error boundary):

- a path that could leave the base URL (``..`` or ``.`` segments, also percent-encoded once or more, an empty
  segment as in ``//host``, a scheme as in ``http:``, backslashes, control characters): `ProxyPathRefused`, 400;
- a request body over ``max_request_bytes`` (by ``Content-Length`` before anything is read, or counted while
  streaming): `ProxyRequestTooLarge`, 413;
- an upstream that cannot be reached or breaks the connection before answering: `UpstreamUnreachable`, 502;
  one that does not answer (response headers) within ``timeout``: `UpstreamTimeout`, 504;
- a response whose ``Content-Length`` is over ``max_response_bytes``: `UpstreamTooLarge`, 502. A streamed
  response without a length that grows past the cap after its headers went out is cut off: the connection to
  the caller is aborted mid-body, so the caller sees an incomplete response, never a silently truncated one;
- a redirect to another scheme, host or port, more than ``max_redirects`` redirects, or a 307/308 that would
  need a streamed body sent again: `UpstreamRedirectRefused`, 502. The safe option: the Location is not
  followed with the token and not handed on (a caller that followed it would reach a host the operator never
  configured). Same-origin redirects are followed with the token (303, and 301/302 after a POST, become a GET
  without a body, as browsers and httpx do).

Headers: hop-by-hop headers (RFC 9110 §7.6.1, and any the ``Connection`` header names) are dropped both ways;
from the caller also ``Authorization``, ``Proxy-Authorization``, ``Cookie``, ``Host``, ``Expect`` and every
``Grantkeeper-*`` / ``X-Grantkeeper-*`` header (the service's own, such as its API key); from the upstream also
``Set-Cookie`` (the caller is not the upstream's browser) and any header whose value contains the token. A
response whose 401 was handled says how in ``Grantkeeper-Auth-Outcome`` (`AuthOutcome` values: ``retried``,
``rejected_again``, ``not_replayable``, ``no_fresh_token``).

Bodies stream both ways. A request body is buffered only up to ``replay_buffer_bytes`` (so that it can be sent
again after a 401); a longer one streams through and is not replayable. Response bodies are passed on raw, with
their ``Content-Encoding``, chunk by chunk; one whose declared ``Content-Length`` fits in one chunk (64 KiB, most
API answers) is read whole first and answered in one piece, so an upstream that breaks it off is a 502.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import quote, unquote

import aiohttp
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send
from yarl import URL

from grantkeeper._exceptions import GrantkeeperError
from grantkeeper.integrations._flow import Answer, AuthOutcome, SendWith, arun_steps_until_send, auth_steps, bearer

__all__ = [
    "OUTCOME_HEADER",
    "ProxyError",
    "ProxyLimits",
    "ProxyNotConfigured",
    "ProxyPathRefused",
    "ProxyRequestTooLarge",
    "UpstreamRedirectRefused",
    "UpstreamTimeout",
    "UpstreamTooLarge",
    "UpstreamUnreachable",
    "proxy_request",
    "upstream_url",
]

logger = logging.getLogger("grantkeeper.serve.proxy")

#: The response header that says what happened to a rejected token (absent when the first answer was final).
OUTCOME_HEADER = "Grantkeeper-Auth-Outcome"

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "te", "trailer"})
_HOP_BY_HOP |= {"proxy-authorization", "transfer-encoding", "upgrade"}
_FROM_CALLER_DROPPED = frozenset({"authorization", "proxy-authorization", "cookie", "host", "expect"})
_FROM_UPSTREAM_DROPPED = frozenset({"set-cookie", "set-cookie2", "authorization"})
_OWN_HEADER = re.compile(r"^(x-)?grantkeeper-", re.IGNORECASE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
#: A body without a Content-Type goes out without one (aiohttp would call it application/octet-stream).
_NOT_ADDED = frozenset({"Content-Type"})


@dataclass(frozen=True, slots=True)
class ProxyLimits:
    """Bounds of one proxied exchange."""

    max_request_bytes: int = 10 * 1024 * 1024
    max_response_bytes: int = 100 * 1024 * 1024
    timeout: float = 60.0  # whole upstream exchange up to the final response headers (redirects, the retry)
    max_redirects: int = 5  # same-origin only
    replay_buffer_bytes: int = 1024 * 1024  # a body up to this is held in memory so a 401 can be retried


class ProxyError(GrantkeeperError):
    """The proxy could not forward the request or pass on the answer. ``http_status`` is the status to answer."""

    code: ClassVar[str] = "proxy_error"
    http_status: ClassVar[int] = 502

    def __init_subclass__(
        cls, *, code: str | None = None, exit_code: int | None = None, http_status: int | None = None
    ) -> None:
        super().__init_subclass__(code=code, exit_code=exit_code)
        if http_status is not None:
            cls.http_status = http_status


class ProxyPathRefused(ProxyError, code="proxy_path_refused", http_status=400):
    """The path could leave the provider's API base URL (``..``, an empty segment, a scheme...): 400."""


class ProxyRequestTooLarge(ProxyError, code="proxy_request_too_large", http_status=413):
    """The request body is over ``max_request_bytes``: 413."""


class UpstreamUnreachable(ProxyError, code="upstream_unreachable", http_status=502):
    """The upstream could not be reached, or broke the connection before answering: 502."""


class UpstreamTimeout(ProxyError, code="upstream_timeout", http_status=504):
    """The upstream sent no response headers within ``timeout``: 504."""


class UpstreamTooLarge(ProxyError, code="upstream_too_large", http_status=502):
    """The response's ``Content-Length`` is over ``max_response_bytes``: 502."""


class UpstreamRedirectRefused(ProxyError, code="upstream_redirect_refused", http_status=502):
    """A redirect to another origin, one too many, or a 307/308 that needs a streamed body again: 502."""


# --- the upstream URL ---------------------------------------------------------------------------------------


def _decoded_forms(text: str) -> Iterable[str]:
    """`text` and every further percent-decoding of it (double encoding such as ``%252e`` included)."""
    for _ in range(8):
        yield text
        decoded = unquote(text)
        if decoded == text:
            return
        text = decoded
    yield text


def _refuse_path(why: str) -> ProxyPathRefused:
    return ProxyPathRefused(
        f"the proxy path is refused: {why}; give a path relative to the provider's API base URL, without "
        "'.' or '..' segments, empty segments, a scheme or backslashes"
    )


def _check_path(raw: str) -> None:
    if raw.startswith("/"):
        raise _refuse_path("it starts with '/' (an empty segment, as in //host)")
    for form in _decoded_forms(raw):
        if "\\" in form:
            raise _refuse_path("it contains a backslash")
        if _CONTROL.search(form):
            raise _refuse_path("it contains a control character")
        if _SCHEME.match(form) or "://" in form:
            raise _refuse_path("it is an absolute URL")
    for segment in raw.split("/") if raw else ():
        if not segment:
            raise _refuse_path("it has an empty segment ('//')")
        for form in _decoded_forms(segment):
            if any(part in {".", ".."} for part in form.split("/")):
                raise _refuse_path("it has a '.' or '..' segment (also when percent-encoded)")


def _raw_tail(request: Request, path: str) -> str:
    """The percent-encoded form of `path` as the caller sent it (the route hands over the decoded one, in which
    an encoded ``%2F`` inside a segment, as GitLab's ``group%2Fproject``, can no longer be told from ``/``)."""
    raw_path = request.scope.get("raw_path")
    if isinstance(raw_path, bytes) and path:
        raw = raw_path.decode("latin-1")
        start = len(raw)
        while (start := raw.rfind("/", 0, start)) >= 0:
            if unquote(raw[start + 1 :]) == path:
                return raw[start + 1 :]
    return "/".join(_quote_segment(segment) for segment in path.split("/"))


def _quote_segment(segment: str) -> str:
    return quote(segment, safe="!$&'()*+,;=:@-._~")


def upstream_url(base_url: str, raw_path: str, query: bytes) -> str:
    """``base_url`` + ``/`` + `raw_path` (percent-encoded, checked by `_check_path`) + ``?query`` unchanged."""
    _check_path(raw_path)
    url = base_url.rstrip("/") + "/" + raw_path
    return f"{url}?{query.decode('latin-1')}" if query else url


def _origin(url: URL) -> tuple[str, str, int | None]:
    return url.scheme, (url.host or "").lower(), url.port  # yarl gives the scheme's default port


def _where(url: URL) -> str:
    """The upstream origin and path for a message: never the query (it may carry a signature) or userinfo."""
    port = "" if url.explicit_port is None else f":{url.explicit_port}"
    return f"{url.scheme}://{url.raw_host or ''}{port}{url.raw_path}"


# --- the request body ---------------------------------------------------------------------------------------


@dataclass
class _Body:
    """The caller's body: fully in memory (replayable) or a prefix plus the rest of the stream (not)."""

    buffered: bytes | None
    stream: AsyncIterator[bytes] | None = None

    @property
    def replayable(self) -> bool:
        return self.stream is None

    def content(self) -> bytes | AsyncIterator[bytes] | None:
        if self.stream is not None:
            stream, self.stream = self.stream, _spent()
            return stream
        return self.buffered or None


async def _spent() -> AsyncIterator[bytes]:
    raise RuntimeError("a streamed request body was sent twice")  # auth_steps never re-sends a stream
    yield b""  # pragma: no cover


def _too_large(limit: int) -> ProxyRequestTooLarge:
    return ProxyRequestTooLarge(
        f"the request body is larger than the proxy's limit of {limit} bytes; send a smaller body or raise the "
        "limit of the service"
    )


async def _read_body(request: Request, limits: ProxyLimits) -> _Body:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_request_bytes:
        raise _too_large(limits.max_request_bytes)
    chunks = request.stream()
    held: list[bytes] = []
    size = 0
    big = declared is not None and declared.isdigit() and int(declared) > limits.replay_buffer_bytes
    if not big:
        async for chunk in chunks:
            size += len(chunk)
            if size > limits.max_request_bytes:
                raise _too_large(limits.max_request_bytes)
            held.append(chunk)
            if size > limits.replay_buffer_bytes:
                break
        else:
            return _Body(b"".join(held))

    async def rest() -> AsyncIterator[bytes]:
        total = size
        for chunk in held:
            yield chunk
        held.clear()
        async for chunk in chunks:
            total += len(chunk)
            if total > limits.max_request_bytes:
                raise _too_large(limits.max_request_bytes)
            yield chunk

    return _Body(None, rest())


# --- headers ------------------------------------------------------------------------------------------------


def _named_by_connection(headers: Iterable[tuple[str, str]]) -> set[str]:
    return {
        token.strip().lower() for name, value in headers if name.lower() == "connection" for token in value.split(",")
    }


def _request_headers(request: Request, body: _Body) -> list[tuple[str, str]]:
    items = request.headers.items()
    dropped = _HOP_BY_HOP | _FROM_CALLER_DROPPED | _named_by_connection(items)
    headers = [(k, v) for k, v in items if k.lower() not in dropped and not _OWN_HEADER.match(k)]
    if body.replayable:  # the client sets the length of the buffered body itself
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
    return headers


def _response_headers(response: aiohttp.ClientResponse, token: str, outcome: AuthOutcome) -> list[tuple[str, str]]:
    items = list(response.headers.items())
    dropped = _HOP_BY_HOP | _FROM_UPSTREAM_DROPPED | _named_by_connection(items)
    headers = []
    for name, value in items:
        if name.lower() in dropped or _OWN_HEADER.match(name):
            continue
        if token and token in value:
            logger.warning("proxy: dropped response header %r from %s: its value contains the access token",
                           name, _where(response.url))  # fmt: skip
            continue
        headers.append((name, value))
    if outcome is not AuthOutcome.SENT:
        headers.append((OUTCOME_HEADER, outcome.value))
    return headers


# --- the exchange -------------------------------------------------------------------------------------------


class _Exchange:
    """One proxied request: sends with a token, follows same-origin redirects, within one deadline."""

    def __init__(self, client: aiohttp.ClientSession, request: Request, url: str, body: _Body,
                 limits: ProxyLimits) -> None:  # fmt: skip
        self.client = client
        self.method = request.method
        self.url = URL(url, encoded=True)  # sent as the caller encoded it (a %2F inside a segment stays one)
        self.body = body
        self.headers = _request_headers(request, body)
        self.limits = limits
        self.deadline = asyncio.get_running_loop().time() + limits.timeout
        # The deadline above bounds the exchange up to the response headers; this bounds each read of a body.
        self.timeouts = aiohttp.ClientTimeout(total=None, sock_read=limits.timeout)

    async def send(self, step: SendWith) -> aiohttp.ClientResponse:
        method, url, body_kept = self.method, self.url, True
        for _ in range(self.limits.max_redirects + 1):
            headers = self.headers if body_kept else [(k, v) for k, v in self.headers if not _is_content(k)]
            headers = [*headers, ("Authorization", bearer(step))]
            response = await self._send_once(method, url, headers, self.body.content() if body_kept else None)
            if response.status not in _REDIRECTS or "location" not in response.headers:
                return response
            response.close()
            try:
                target = url.join(URL(response.headers["location"]))
            except ValueError:
                raise UpstreamRedirectRefused(
                    f"{self.method} {_where(url)} answered {response.status} with a Location that is not a URL; "
                    "not following it"
                ) from None
            if _origin(target) != _origin(self.url):
                raise UpstreamRedirectRefused(
                    f"{self.method} {_where(url)} redirected to another origin ({target.scheme}://{target.host}); "
                    "the proxy follows redirects only within the provider's API base URL, so the token never "
                    "goes elsewhere: call that URL yourself, or fix the provider's api_base_url"
                )
            if response.status in {307, 308}:
                if not self.body.replayable:
                    raise UpstreamRedirectRefused(
                        f"{self.method} {_where(url)} answered {response.status}, which needs the body sent "
                        "again, but it was streamed (larger than the replay buffer); send it to the target path "
                        "directly"
                    )
            elif response.status == 303 or method == "POST":
                method, body_kept = ("HEAD" if method == "HEAD" else "GET"), False
            url = target
        raise UpstreamRedirectRefused(
            f"{self.method} {_where(self.url)} was redirected more than {self.limits.max_redirects} times; "
            "not following further"
        )

    async def _send_once(self, method: str, url: URL, headers: list[tuple[str, str]],
                         content: bytes | AsyncIterator[bytes] | None) -> aiohttp.ClientResponse:  # fmt: skip
        try:
            async with asyncio.timeout_at(self.deadline):
                return await self.client.request(method, url, headers=headers, data=content, allow_redirects=False,
                                                 skip_auto_headers=_NOT_ADDED, timeout=self.timeouts)  # fmt: skip
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"{method} {_where(url)} did not answer within {self.limits.timeout:g} s; "
                "retry later, or raise the proxy timeout for slow endpoints"
            ) from exc
        except aiohttp.ClientError as exc:
            if (ours := _own_error(exc)) is not None:
                raise ours from None  # the request body's stream refused itself (over the cap)
            raise UpstreamUnreachable(
                f"{method} {_where(url)} could not be reached or broke the connection "
                f"({type(exc).__name__}); check the provider's api_base_url and that the API is up"
            ) from exc


def _own_error(exc: BaseException) -> ProxyError | None:
    """The `ProxyError` behind `exc`, if any: aiohttp reports an exception raised by a body it was sending as a
    connection error caused by it."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ProxyError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def _is_content(name: str) -> bool:
    return name.lower() in {"content-length", "content-type", "content-encoding"}


def _raw(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]


class _UpstreamStream(StreamingResponse):
    """Streams the upstream body raw and always closes the upstream response, whatever ends the stream."""

    def __init__(self, upstream: aiohttp.ClientResponse, headers: list[tuple[str, str]], limits: ProxyLimits) -> None:
        super().__init__(self._chunks(upstream, limits), status_code=upstream.status)
        self.upstream = upstream
        self.raw_headers = _raw(headers)

    @staticmethod
    async def _chunks(upstream: aiohttp.ClientResponse, limits: ProxyLimits) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in upstream.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > limits.max_response_bytes:
                logger.warning("proxy: %s grew past %d bytes while streaming; aborted the response to the caller",
                               _where(upstream.url), limits.max_response_bytes)  # fmt: skip
                raise UpstreamTooLarge(
                    f"the upstream response is larger than the proxy's limit of {limits.max_response_bytes} bytes"
                )
            yield chunk

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.upstream.release()  # back to the pool when read to the end, else the connection is closed


async def proxy_request(
    request: Request,
    *,
    client: aiohttp.ClientSession,
    base_url: str,
    path: str,
    get_token: Callable[[], Awaitable[str]],
    report_rejected: Callable[[str], Awaitable[None]],
    limits: ProxyLimits,
) -> Response:
    """Forward `request` to `base_url` + `path` with the grant's access token; stream the answer back.

    `path` is the route's decoded ``{path:path}`` parameter; the caller's percent-encoding is kept when the raw
    request path ends with it. Raises a `ProxyError` for anything refused (module docstring).
    """
    url = upstream_url(base_url, _raw_tail(request, path), request.scope.get("query_string", b""))
    body = await _read_body(request, limits)
    exchange = _Exchange(client, request, url, body, limits)
    flow = auth_steps(replayable=body.replayable, any_401=False)
    response: aiohttp.ClientResponse | None = None
    token = ""
    try:
        step = await arun_steps_until_send(flow, None, get_token, report_rejected)
        while not isinstance(step, AuthOutcome):
            if response is not None:
                response.close()  # the rejected answer, before sending again
            token = step.token.reveal()
            response = await exchange.send(step)
            answer = Answer.of(response.status, response.headers.getall("www-authenticate", []))
            step = await arun_steps_until_send(flow, answer, get_token, report_rejected)
    except BaseException:
        if response is not None:
            response.close()
        raise
    finally:
        flow.close()
    assert response is not None
    if step is not AuthOutcome.SENT:
        logger.info("proxy: %s %s: the access token was rejected: %s", request.method, _where(exchange.url),
                    step.value)  # fmt: skip
    declared = response.headers.get("content-length")
    length = int(declared) if declared is not None and declared.isdigit() else None
    if length is not None and length > limits.max_response_bytes:
        response.close()
        raise UpstreamTooLarge(
            f"{request.method} {_where(exchange.url)} answered with {declared} bytes, over the proxy's limit of "
            f"{limits.max_response_bytes}; fetch it from the API directly or raise the limit"
        )
    headers = _response_headers(response, token, step)
    if length is not None and length <= _CHUNK:
        return await _whole(exchange, response, headers)
    return _UpstreamStream(response, headers, limits)


async def _whole(exchange: _Exchange, upstream: aiohttp.ClientResponse, headers: list[tuple[str, str]]) -> Response:
    """A small answer (declared length within one chunk), read before anything goes to the caller: one write and
    no streaming task (most API answers), and an upstream that breaks it off is a clean 502, not a cut-off 200."""
    where = f"{upstream.method} {_where(upstream.url)}"
    try:
        body = await upstream.read()
    except TimeoutError as exc:
        raise UpstreamTimeout(f"{where} stopped sending its answer for {exchange.limits.timeout:g} s; "
                              "retry later, or raise the proxy timeout for slow endpoints") from exc  # fmt: skip
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(
            f"{where} broke the connection before its answer was complete ({type(exc).__name__}); retry, and check "
            "that the API is healthy"
        ) from exc
    finally:
        upstream.release()
    answer = Response(body, status_code=upstream.status)
    answer.raw_headers = _raw(headers)
    return answer


class ProxyNotConfigured(ProxyError, code="proxy_not_configured", http_status=409):
    """The grant's provider has no API base URL to proxy to: 409."""
