"""Build the HTTP clients that talk to providers, send one token request, and turn what happened into a value
the protocol can classify.

The split that matters for "spend once" (I2): `NotSent` means the refresh token cannot have reached the
provider (connect failed, or the deadline passed before a byte of the request was written); `Ambiguous` means
it may have (timeout, reset or deadline after the request was written).

One wall-clock deadline bounds the whole exchange, connect to last byte: httpx's per-phase timeouts do not
bound a server that trickles one byte at a time, and the lease (longer than the deadline, see `RefreshPolicy`)
must never expire under a live request. The sync sender clamps every socket operation of the exchange (connect,
TLS handshake, each read and write) to the time left before the deadline, through the network backend of the
clients built here, so a trickling server is cut off at the deadline on a new or a kept-alive connection alike,
with no thread per exchange; the async sender cancels the exchange with ``asyncio.timeout``.

Connections are kept alive between token requests (a scheduler or a broker refreshes many grants at one token
endpoint), for `KEEPALIVE_EXPIRY` seconds: less than the idle timeout of common servers (uvicorn 5 s, gunicorn
2 s, nginx 75 s), so the pool rarely offers a connection that the server is closing. If it does, the request
fails after it was written and is `Ambiguous`, which the protocol resolves as any ambiguous exchange (I2).

Networks (docs/providers.md, "Endpoints, networks and consent parameters"): a provider's stored proxy, else
``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` minus ``NO_PROXY``; its stored CA bundle, else ``SSL_CERT_FILE``,
else ``SSL_CERT_DIR``, else certifi's bundle (httpx's default). ``.netrc`` is never read.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import http.cookiejar
import os
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import certifi
import httpcore
import httpx

from grantkeeper._exceptions import TLSVerificationFailed, sanitize_provider_text
from grantkeeper.model import Provider
from grantkeeper.model.exchange import Ambiguous, HttpReply, NotSent, SendResult
from grantkeeper.protocol.answers import MAX_BODY_BYTES

__all__ = [
    "KEEPALIVE_EXPIRY",
    "NETWORK",
    "Ambiguous",
    "Network",
    "NotSent",
    "SendResult",
    "asend",
    "async_client",
    "client",
    "map_transport_error",
    "proxy_for",
    "send",
    "tls_context",
    "tls_failure",
    "trust_of",
]

_KEPT_HEADERS = ("content-type", "retry-after", "www-authenticate")

#: The request extension that carries a provider's `Network` to the clients built here.
NETWORK = "grantkeeper.network"

#: Seconds an idle connection to a token endpoint is kept for reuse (see the module's docstring).
KEEPALIVE_EXPIRY = 1.0
_LIMITS = httpx.Limits(max_keepalive_connections=20, keepalive_expiry=KEEPALIVE_EXPIRY)


@dataclass(frozen=True, slots=True)
class Network:
    """How to reach one provider: its CA bundle (a PEM path) and proxy URL; None means the environment's."""

    ca_bundle: str | None = None
    proxy: str | None = None

    @classmethod
    def of(cls, provider: Provider) -> Network:
        return cls(provider.ca_bundle, provider.proxy)


# --- trust and proxies -------------------------------------------------------------------------------------


def trust_of(network: Network) -> tuple[str, str | None, str | None]:
    """(what to name in messages, cafile, capath): the provider's bundle, SSL_CERT_FILE, SSL_CERT_DIR, certifi."""
    if network.ca_bundle:
        return f"the provider's CA bundle {network.ca_bundle}", network.ca_bundle, None
    if cafile := os.environ.get("SSL_CERT_FILE"):
        return f"SSL_CERT_FILE={cafile}", cafile, None
    if capath := os.environ.get("SSL_CERT_DIR"):
        return f"SSL_CERT_DIR={capath}", None, capath
    return "certifi's CA bundle", certifi.where(), None


def tls_context(source: str, cafile: str | None, capath: str | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    except (OSError, ssl.SSLError) as exc:
        raise TLSVerificationFailed(
            f"cannot load CA certificates from {source} ({getattr(exc, 'strerror', None) or exc}); give a readable "
            "PEM file with 'grantkeeper provider add NAME --ca-bundle PEM' or fix SSL_CERT_FILE / SSL_CERT_DIR"
        ) from None


# The stdlib's NO_PROXY matcher (requests uses it too); typeshed does not list it.
_bypass: Callable[[str, dict[str, str]], bool] = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]


def _environment_proxy(key: str) -> str | None:
    """``{key}_proxy`` by urllib's rules (`urllib.request.getproxies_environment`): the lower-case name wins, empty
    meaning none; ``HTTP_PROXY`` is ignored under CGI (``REQUEST_METHOD`` set: "httpoxy"). Looked up by name,
    because urllib's scan of the whole environment cost a tenth of a token request; so, unlike urllib, a name in
    mixed case (``Https_Proxy``) is not read."""
    lower = os.environ.get(f"{key}_proxy")
    if lower is not None:
        return lower or None
    if key == "http" and "REQUEST_METHOD" in os.environ:
        return None
    return os.environ.get(f"{key.upper()}_PROXY") or None


def proxy_for(url: httpx.URL, network: Network) -> str | None:
    """The provider's own proxy wins; else the environment's for the URL's scheme, unless NO_PROXY matches."""
    if network.proxy:
        return network.proxy
    chosen = _environment_proxy(url.scheme) or _environment_proxy("all")
    if not chosen:
        return None
    no_proxy = _environment_proxy("no")
    if no_proxy and _bypass(url.host, {"no": no_proxy}):
        return None
    return chosen


def tls_failure(exc: BaseException, trust: str | None = None) -> TLSVerificationFailed | None:
    """The configuration error for a TLS certificate that did not verify, if that is what `exc` was."""
    cause: BaseException | None = exc
    seen: set[int] = set()  # a chain can loop (an exception raised while handling its own cause)
    while cause is not None and id(cause) not in seen and not isinstance(cause, ssl.SSLCertVerificationError):
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    if not isinstance(cause, ssl.SSLCertVerificationError):
        return None
    why = sanitize_provider_text(cause.verify_message or cause.reason or "certificate verify failed", 160)
    against = f" against {trust}" if trust else ""
    return TLSVerificationFailed(
        f"the provider's TLS certificate did not verify{against}: certificate verify failed: {why}. Nothing was "
        "sent. If the server uses a private CA, give its PEM bundle with 'grantkeeper provider add NAME "
        "--ca-bundle PEM' (or set SSL_CERT_FILE)"
    )


_Transport = TypeVar("_Transport", httpx.HTTPTransport, httpx.AsyncHTTPTransport)


class _Router(Generic[_Transport]):
    """One inner transport per (trust, proxy), chosen per request from its `NETWORK` extension."""

    def __init__(self, network: Network, make: Callable[..., _Transport]) -> None:
        self._network = network
        self._make: Callable[..., _Transport] = make
        self._transports: dict[tuple[str, str | None, str | None, str | None], _Transport] = {}
        self._guard = threading.Lock()
        self._pid = os.getpid()

    def route(self, request: httpx.Request) -> tuple[_Transport, str]:
        network = request.extensions.get(NETWORK, self._network)
        source, cafile, capath = trust_of(network)
        proxy = proxy_for(request.url, network)
        key = (source, cafile, capath, proxy)
        with self._guard:
            if self._pid != os.getpid():
                # A forked child must not write into its parent's kept-alive connections (one socket, two
                # processes): it starts with pools of its own. The parent's stay open for the parent.
                self._pid, self._transports = os.getpid(), {}
            transport = self._transports.get(key)
            if transport is None:
                context = tls_context(source, cafile, capath)
                transport = self._make(verify=context, proxy=proxy, limits=_LIMITS, trust_env=False)
                self._transports[key] = transport
        return transport, source

    def drain(self) -> list[_Transport]:
        with self._guard:
            transports, self._transports = list(self._transports.values()), {}
        return transports


def _verified(exc: httpx.ConnectError, trust: str) -> Exception:
    return tls_failure(exc, trust) or exc


# --- the sync face's deadline: every socket operation waits at most until the exchange's deadline ---------------

#: The exchange the current thread (or context) is sending, if any: its monotonic deadline bounds each socket operation.
_DEADLINE: contextvars.ContextVar[_Exchange | None] = contextvars.ContextVar("grantkeeper_deadline", default=None)


def _left(timeout: float | None, late: type[httpcore.TimeoutException] | None) -> float | None:
    """`timeout` clamped to the time left before the current exchange's deadline. Once it passed, `late` is raised;
    with `late` None (a read) the operation may still take what already arrived, without waiting (timeout 0)."""
    exchange = _DEADLINE.get()
    if exchange is None:
        return timeout
    exchange.clamped = True
    left = exchange.deadline - time.monotonic()
    if left <= 0:
        if late is None:
            return 0.0
        raise late("the exchange's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        # An answer that arrived while this process was stopped or starved is read, not thrown away: it may carry
        # the only copy of a rotated refresh token (I1). Past the deadline a read never waits, so a trickle still
        # ends there.
        return self._inner.read(max_bytes, _left(timeout, None))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
    ) -> httpcore.NetworkStream:
        timeout = _left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _deadline_transport(**options: Any) -> httpx.HTTPTransport:
    """httpx's transport, whose connections (direct, tunnelled or via a SOCKS proxy) take their socket operations'
    timeouts from `_left`. httpx builds the httpcore pool itself and offers no backend argument, so the pool's
    backend is wrapped after the fact; `tests/tokens/test_transport_deadline.py` fails if either name moves."""
    transport = httpx.HTTPTransport(**options)
    pool = transport._pool
    pool._network_backend = _DeadlineBackend(pool._network_backend)
    return transport


class _SyncRouter(httpx.BaseTransport):
    def __init__(self, network: Network) -> None:
        self._router = _Router(network, _deadline_transport)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        transport, trust = self._router.route(request)
        try:
            return transport.handle_request(request)
        except httpx.ConnectError as exc:
            raise _verified(exc, trust) from exc

    def close(self) -> None:
        for transport in self._router.drain():
            transport.close()


class _AsyncRouter(httpx.AsyncBaseTransport):
    def __init__(self, network: Network) -> None:
        self._router = _Router(network, httpx.AsyncHTTPTransport)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport, trust = self._router.route(request)
        try:
            return await transport.handle_async_request(request)
        except httpx.ConnectError as exc:
            raise _verified(exc, trust) from exc

    async def aclose(self) -> None:
        for transport in self._router.drain():
            await transport.aclose()


class _NoCookies(http.cookiejar.CookieJar):
    """The clients keep no cookies (and so send none): one client serves every grant of every tenant, and a cookie
    one provider sets on one grant's answer must never ride along with another grant's request. Not parsing them
    also saves a tenth of a token exchange's CPU."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def add_cookie_header(self, request: Any) -> None:
        return None


def client(network: Network | None = None, *, timeout: httpx.Timeout | float = 10.0) -> httpx.Client:
    """The one way grantkeeper builds a sync client: redirects off, no ``.netrc``, no cookies, proxies and CAs as
    above. A request carrying a provider's `NETWORK` extension uses that provider's settings, else `network`'s."""
    return httpx.Client(transport=_SyncRouter(network or Network()), timeout=timeout, follow_redirects=False,
                        trust_env=False, cookies=_NoCookies())  # fmt: skip


def async_client(network: Network | None = None, *, timeout: httpx.Timeout | float = 10.0) -> httpx.AsyncClient:
    """`client` for asyncio."""
    return httpx.AsyncClient(transport=_AsyncRouter(network or Network()), timeout=timeout, follow_redirects=False,
                             trust_env=False, cookies=_NoCookies())  # fmt: skip


# --- one exchange ------------------------------------------------------------------------------------------


def map_transport_error(exc: httpx.TransportError) -> NotSent | Ambiguous:
    """Most specific first: connect-phase failures are provably unsent; everything later is ambiguous."""
    reason = f"{type(exc).__name__}: {sanitize_provider_text(exc, 120)}"
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout | httpx.UnsupportedProtocol):
        return NotSent(reason)
    return Ambiguous(reason)


class _Exchange:
    """One exchange, whichever face drives it: the deadline, the body read so far under its cap, what httpcore's
    trace says the wire has seen, the means to end it at its deadline, and what a failure means for I2.

    `send` and `asend` differ only in how they wait (socket operations clamped to the deadline, or
    ``asyncio.timeout``) and in ``await``; every decision about the exchange is made here, once.
    """

    def __init__(self, request: httpx.Request | None, budget: float) -> None:
        self.budget = budget
        # Every phase of this request waits at most `budget`; `deadline` bounds the whole exchange. (None: a
        # request that is not httpx's, sent by a client that keeps the deadline itself: the aiohttp sender.)
        if request is not None:
            request.extensions["timeout"] = httpx.Timeout(budget).as_dict()
        self.deadline = time.monotonic() + budget
        self.traced = False  # a transport that is not httpcore's (a mock, a caller's own) reports nothing
        self.clamped = False  # the sockets themselves keep the deadline (the sync clients built here)
        self.writing = False
        self._body = bytearray()
        self._chained = request.extensions.get("trace") if request is not None else None

    # -- what the wire has seen (httpcore's trace), for the sync and the async face ----------------------

    def trace(self, event: str, info: dict[str, Any]) -> None:
        self._note(event, info)
        if self._chained is not None:
            self._chained(event, info)

    async def atrace(self, event: str, info: dict[str, Any]) -> None:
        self._note(event, info)
        if self._chained is not None:
            await self._chained(event, info)

    def _note(self, event: str, info: dict[str, Any]) -> None:
        self.traced = True
        if event.endswith("send_request_headers.started") and getattr(info.get("request"), "method", b"") != b"CONNECT":
            self.writing = True  # the proxy's CONNECT shares our trace but carries nothing of the request

    # -- the deadline ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def deadline_bound(self) -> Iterator[None]:
        """The sync face's deadline: the clients built here clamp each socket operation to the time left."""
        token = _DEADLINE.set(self)
        try:
            yield
        finally:
            _DEADLINE.reset(token)

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    # -- the body ----------------------------------------------------------------------------------------

    def grown(self, status: int, headers: Mapping[str, str], chunk: bytes) -> SendResult | None:
        """Append `chunk` to the body of the answer (`status`, `headers`); what to answer at once (over the body
        cap, past the deadline), else None."""
        self._body += chunk
        if len(self._body) > MAX_BODY_BYTES:
            return reply_of(status, headers, b"", truncated=True)
        if self.expired and not self.clamped:
            # A guard for a caller's own client, whose sockets do not take the deadline into account. Clamped
            # sockets never wait past it, and what they read without waiting is kept.
            return Ambiguous("response not complete within the request budget")
        return None

    def reply(self, status: int, headers: Mapping[str, str]) -> HttpReply:
        """The whole answer, read within the cap and the deadline."""
        return reply_of(status, headers, bytes(self._body), truncated=False)

    # -- what went wrong ---------------------------------------------------------------------------------

    def failed(self, exc: httpx.TransportError) -> NotSent | Ambiguous:
        """What a transport error means for this exchange; a TLS verification failure is raised instead."""
        if failure := tls_failure(exc):
            raise failure from None
        if self.expired or isinstance(exc, httpx.ReadTimeout | httpx.WriteTimeout):
            # Every phase waits at most the time left (the budget), so a read or write timeout is the deadline.
            return self.late()
        mapped = map_transport_error(exc)
        # Failing before the first byte of the request (e.g. a proxy that never answers CONNECT) sent nothing.
        return NotSent(mapped.reason) if self._unsent else mapped

    def late(self) -> NotSent | Ambiguous:
        reason = f"no complete response within {self.budget:g} s (the deadline for the whole exchange)"
        return NotSent(reason + "; the request was not written") if self._unsent else Ambiguous(reason)

    @property
    def _unsent(self) -> bool:
        return self.traced and not self.writing


def reply_of(status: int, headers: Mapping[str, str], body: bytes, truncated: bool) -> HttpReply:
    """An answer as the protocol sees it: `headers` (case-insensitive, any client's) cut to the ones it reads."""
    return HttpReply(status, {name: headers[name] for name in _KEPT_HEADERS if name in headers}, body, truncated)


def send(client: httpx.Client, request: httpx.Request, *, budget: float) -> SendResult:
    """Send `request` and read the reply within `budget` seconds, wall clock, connect to last byte.

    Raises:
        TLSVerificationFailed: the server's certificate did not verify (nothing was sent; not transient).
    """
    exchange = _Exchange(request, budget)
    request.extensions["trace"] = exchange.trace
    try:
        with exchange.deadline_bound(), contextlib.closing(client.send(request, stream=True)) as response:
            for chunk in response.iter_bytes():
                if (early := exchange.grown(response.status_code, response.headers, chunk)) is not None:
                    return early
            return exchange.reply(response.status_code, response.headers)
    except httpx.TransportError as exc:
        return exchange.failed(exc)


async def asend(client: httpx.AsyncClient, request: httpx.Request, *, budget: float) -> SendResult:
    """`send` for asyncio: the deadline cancels the exchange, which closes its connection."""
    exchange = _Exchange(request, budget)
    request.extensions["trace"] = exchange.atrace
    try:
        async with asyncio.timeout(budget), contextlib.aclosing(await client.send(request, stream=True)) as response:
            async for chunk in response.aiter_bytes():
                if (early := exchange.grown(response.status_code, response.headers, chunk)) is not None:
                    return early
            return exchange.reply(response.status_code, response.headers)
    except TimeoutError:
        return exchange.late()
    except httpx.TransportError as exc:
        return exchange.failed(exc)
