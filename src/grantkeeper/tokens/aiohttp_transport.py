"""The async sender over aiohttp, for many token requests at once (the scheduler's group commit).

httpx's async stack (httpcore's pool, anyio's streams, h11) costs about 2 ms of CPU per token request when dozens
are in flight: the pool's assignment of requests to connections grows with the square of its connections and
asks every idle socket for its peer name each time. aiohttp's connector and its C HTTP parser take about a tenth of
that (benchmarks/bench_schedule.py). Everything an exchange promises stays as `grantkeeper.tokens.transport` has it,
decided by the same `_Exchange`:

- one wall-clock deadline for the whole exchange (connect, a proxy's CONNECT, TLS, write, every read): the
  exchange runs under ``asyncio.timeout``, and a connection cut off mid-answer is closed, never pooled;
- `NotSent` only when the request cannot have left: a failed connect (refused, DNS, a proxy that refused or never
  answered the CONNECT) or a deadline that passed before a connection was handed over to write on; everything
  after that is `Ambiguous`. aiohttp never re-sends a POST on a kept-alive connection the server closed;
- no redirects, no cookies kept or sent, no ``.netrc`` or proxy from the environment except through `proxy_for`
  (the same rules and ``NO_PROXY`` as the httpx clients), a provider's CA bundle through `trust_of`;
- the body read under `MAX_BODY_BYTES`, only ``content-type``, ``retry-after`` and ``www-authenticate`` kept;
- a certificate that does not verify raises `TLSVerificationFailed` naming the trust source.

`AiohttpSender` builds each refresh from the model (`grantkeeper.tokens.request.refresh_post`): the headers and
body bytes an `httpx.Request` would carry, without building one only for aiohttp to read it back; `asend` takes an
`httpx.Request` (any other client-authenticated POST) and sends it through the same exchange (`apost`).

HTTP and HTTPS proxies (CONNECT) only: a SOCKS proxy is refused with a `ConfigurationError` (the httpx sender,
`AsyncHttpSender`, reaches SOCKS proxies).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import weakref
from dataclasses import dataclass
from types import SimpleNamespace

import aiohttp
import httpx
import yarl

from grantkeeper._exceptions import ConfigurationError, sanitize_provider_text
from grantkeeper.model.exchange import Ambiguous, NotSent, RefreshRequest, SendResult
from grantkeeper.tokens.request import FormPost, _parsed_url, refresh_post
from grantkeeper.tokens.transport import (
    KEEPALIVE_EXPIRY,
    NETWORK,
    Network,
    _Exchange,
    proxy_for,
    tls_context,
    tls_failure,
    trust_of,
)

__all__ = ["CONNECTIONS", "AiohttpSender", "apost", "asend", "session"]

#: Connections a session keeps open at most (all token endpoints together); requests beyond wait for one.
CONNECTIONS = 100
#: Request headers aiohttp writes itself from the URL and body (and Accept-Encoding: what it can decode).
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "accept-encoding"})
_PROXY_SCHEMES = frozenset({"http", "https"})


async def _request_started(_: aiohttp.ClientSession, context: SimpleNamespace, __: object) -> None:
    exchange = context.trace_request_ctx
    if isinstance(exchange, _Exchange):
        exchange.traced = True


async def _connection_handed_over(_: aiohttp.ClientSession, context: SimpleNamespace, __: object) -> None:
    # From here the request's first bytes go out (after a proxy's tunnel and TLS, which come before this signal):
    # marked one step early, so an exchange is never called unsent once it could have been written.
    exchange = context.trace_request_ctx
    if isinstance(exchange, _Exchange):
        exchange.writing = True


def _tracing() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(_request_started)
    trace.on_connection_create_end.append(_connection_handed_over)
    trace.on_connection_reuseconn.append(_connection_handed_over)
    return trace


def session(*, connections: int = CONNECTIONS) -> aiohttp.ClientSession:
    """The one way grantkeeper builds an aiohttp session for token requests (call it on the running loop): no
    cookies, no ``.netrc`` or environment proxies of aiohttp's own, connections kept `KEEPALIVE_EXPIRY` seconds,
    at most `connections` open, and the trace that tells `NotSent` from `Ambiguous`."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=KEEPALIVE_EXPIRY),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None),  # each exchange has its own deadline (asyncio.timeout)
        trace_configs=[_tracing()],
    )


#: Per session, one TLS context per trust source, built once: loading a CA bundle costs milliseconds, and aiohttp
#: pools connections per context, so a context built per request would never reuse a connection.
_CONTEXTS: weakref.WeakKeyDictionary[aiohttp.ClientSession, dict[tuple[str, str | None, str | None], ssl.SSLContext]]
_CONTEXTS = weakref.WeakKeyDictionary()


def _tls(client: aiohttp.ClientSession, network: Network) -> tuple[str, ssl.SSLContext]:
    key = trust_of(network)
    built = _CONTEXTS.get(client)
    if built is None:
        built = _CONTEXTS[client] = {}
    context = built.get(key)
    if context is None:
        context = built[key] = tls_context(*key)
    return key[0], context


def _proxy(url: httpx.URL, network: Network) -> str | None:
    proxy = proxy_for(url, network)
    if proxy is not None and httpx.URL(proxy).scheme not in _PROXY_SCHEMES:
        raise ConfigurationError(
            f"the aiohttp sender reaches providers through HTTP(S) proxies only, not {httpx.URL(proxy).scheme}://; "
            "use grantkeeper.tokens.sender.AsyncHttpSender (httpx) for a SOCKS proxy"
        )
    return proxy


@functools.lru_cache(maxsize=256)
def _target(url: str) -> tuple[httpx.URL, yarl.URL]:
    """A token URL parsed once for the proxy rules and once for aiohttp (which would parse a string every time)."""
    return _parsed_url(url), yarl.URL(url)


def _failed(exchange: _Exchange, exc: aiohttp.ClientError, trust: str) -> NotSent | Ambiguous:
    """What an aiohttp error means for this exchange; a TLS verification failure is raised instead."""
    # aiohttp's certificate error is itself an ssl.CertificateError without ssl's fields: the cause is inside it.
    cause = exc.certificate_error if isinstance(exc, aiohttp.ClientConnectorCertificateError) else exc
    if failure := tls_failure(cause, trust):
        raise failure from None
    if exchange.expired:
        return exchange.late()
    reason = f"{type(exc).__name__}: {sanitize_provider_text(exc, 120)}"
    # A connect error (refused, DNS, TLS, a proxy's refusal) comes before any byte of the request.
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ClientHttpProxyError | aiohttp.InvalidURL):
        return NotSent(reason)
    return NotSent(reason) if exchange.traced and not exchange.writing else Ambiguous(reason)


async def asend(
    client: aiohttp.ClientSession, request: httpx.Request, *, budget: float, network: Network | None = None
) -> SendResult:
    """Send `request` (built as for the httpx clients: its provider's `Network` in its extensions, else `network`'s
    settings, else the environment's) and read the reply within `budget` seconds, wall clock, connect to last byte.

    Raises:
        TLSVerificationFailed: the server's certificate did not verify (nothing was sent; not transient).
        ConfigurationError: the provider's proxy is not an HTTP(S) proxy.
    """
    network = request.extensions.get(NETWORK) or network or Network()
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw
               if k.lower().decode("latin-1") not in _OWN_HEADERS]  # fmt: skip
    post = FormPost(str(request.url), tuple(headers), request.read(), network)
    return await apost(client, post, budget=budget, method=request.method)


async def apost(client: aiohttp.ClientSession, post: FormPost, *, budget: float, method: str = "POST") -> SendResult:
    """`asend` for a request built without httpx (`grantkeeper.tokens.request.refresh_post`), through `post.network`:
    the same exchange, the same errors."""
    exchange = _Exchange(None, budget)
    trust, context = _tls(client, post.network)
    parsed, url = _target(post.url)
    proxy = _proxy(parsed, post.network)
    response: aiohttp.ClientResponse | None = None
    whole = False
    try:
        async with asyncio.timeout(budget):
            response = await client.request(
                method, url, data=post.body, headers=post.headers, proxy=proxy, ssl=context,
                allow_redirects=False, trace_request_ctx=exchange,
            )  # fmt: skip
            async for chunk in response.content.iter_any():
                if (early := exchange.grown(response.status, response.headers, chunk)) is not None:
                    return early
            whole = True
            return exchange.reply(response.status, response.headers)
    except TimeoutError:
        return exchange.late()
    except aiohttp.ClientError as exc:
        return _failed(exchange, exc, trust)
    finally:
        if response is not None:
            # A whole answer gives its connection back to the pool; one cut off (deadline, cap, error) is closed,
            # so no later exchange reads the rest of it.
            response.release() if whole else response.close()


@dataclass(frozen=True, slots=True)
class AiohttpSender:
    """The engine's `AsyncSender` over an aiohttp session (`session()`): many token requests at once, cheaply."""

    client: aiohttp.ClientSession
    #: Unused by refreshes, which always go through their provider's own `Network` (as they did when built as httpx
    #: requests); kept so that existing callers construct the sender as before.
    network: Network | None = None

    async def send(self, request: RefreshRequest, *, budget: float) -> SendResult:
        # The request's parts straight from the model: an httpx.Request here would only be read back (request.py).
        post = refresh_post(request.provider, request.refresh_token, scopes=request.scopes)
        return await apost(self.client, post, budget=budget)
