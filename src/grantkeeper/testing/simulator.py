"""A real OAuth 2.0 token endpoint on loopback, for tests, demos and benchmarks.

`ProviderSimulator` serves ``POST /token`` (RFC 6749 §6 refresh, §5.1 responses, §5.2 errors) over plain HTTP/1.1
with keep-alive, from a daemon thread. It models the behaviours that make refresh-token rotation hard to live with:
rotation policies (always / conditional / never), a reuse grace window for the immediately superseded token, reuse
detection that revokes the whole grant family, and injectable faults (delays, HTTP errors, malformed bodies,
connections dropped before or after the refresh was committed server-side).

It also serves the device authorization grant (RFC 8628): ``POST /device_authorization`` issues a device code
and a user code; tests play the user with `approve` / `deny`, and polls of ``POST /token`` with the device code
answer ``authorization_pending``, ``access_denied``, ``expired_token`` (by the simulator's clock) or the tokens.
Inject ``HttpError(400, error="slow_down")`` (or any other error) to answer a poll otherwise, as for refreshes.

Standard library only. Every state change happens under one lock, so concurrent requests are linearizable; only
the `Delay` fault sleeps outside it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import secrets
import socket
import socketserver
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final

from grantkeeper.testing._client_assertion import check_assertion, load_public_key

__all__ = [
    "AUTH_METHODS",
    "MALFORMED_KINDS",
    "RESPONSE_QUIRKS",
    "ROTATION_MODES",
    "Delay",
    "DropAfterRotate",
    "DropBeforeProcessing",
    "Fault",
    "HttpError",
    "Malformed",
    "ProviderSimulator",
    "SimulatorStats",
]

ROTATION_MODES: Final = ("always", "conditional", "never")
AUTH_METHODS: Final = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
_ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Response shapes real providers use (see docs/providers.md): ``no_expires_in`` omits it, ``expires_in_string`` sends
#: it as a string, ``jwt_access_token`` mints JWT access tokens carrying ``exp``, ``refresh_token_expires_in`` /
#: ``x_refresh_token_expires_in`` state the refresh token's lifetime, ``scope_required`` refuses a refresh without
#: ``scope`` (``invalid_request``).
RESPONSE_QUIRKS: Final = frozenset(
    {"no_expires_in", "expires_in_string", "jwt_access_token", "refresh_token_expires_in",
     "x_refresh_token_expires_in", "scope_required"}
)  # fmt: skip
_RFC8414: Final = "/.well-known/oauth-authorization-server"  # RFC 8414 §3.1: inserted before the issuer's path
_OIDC: Final = "/.well-known/openid-configuration"  # OpenID Connect Discovery §4: appended to the issuer
MALFORMED_KINDS: Final = frozenset(
    {
        "html",
        "non_json",
        "missing_access_token",
        "missing_expires_in",
        "wrong_types",
        "expires_in_string",
        "expires_in_negative",
        "expires_in_huge",
        "oversized",
        "wrong_token_type",
        "json_array",
        "empty",
    }
)

_MAX_BODY: Final = 64 * 1024  # a refresh request is a few hundred bytes
_MAX_DISCARD: Final = 4 * 1024 * 1024  # read (and discard) at most this much of an oversized body before a 413
_OVERSIZED_PADDING: Final = 2 * 1024 * 1024 + 1024
_IDLE_TIMEOUT: Final = 120.0  # seconds a keep-alive connection may sit idle
_POLL_INTERVAL: Final = 0.05  # serve_forever's shutdown latency
_JSON: Final = "application/json"
_BASIC_CHALLENGE: Final = 'Basic realm="simulator"'
_DEVICE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"
_USER_CODE_ALPHABET: Final = "BCDFGHJKLMNPQRSTVWXZ"  # RFC 8628 §6.1: no vowels, no look-alike characters


# --------------------------------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    """Base class of the injectable faults; inject one of the subclasses."""


@dataclass(frozen=True)
class Delay(Fault):
    """Sleep `seconds` (real time) before processing the request, then process it normally."""

    seconds: float

    def __post_init__(self) -> None:
        if not self.seconds >= 0:  # also rejects NaN
            raise ValueError("Delay.seconds must be >= 0")


@dataclass(frozen=True)
class HttpError(Fault):
    """Answer with `status` without processing the request (the refresh token is not consumed).

    With `error`, the body is ``{"error": error}``; `retry_after` sets the Retry-After header; `body` overrides the
    body verbatim (its Content-Type is guessed from its first byte: JSON, HTML or plain text).
    """

    status: int = 503
    error: str | None = None
    retry_after: str | None = None
    body: bytes | None = None

    def __post_init__(self) -> None:
        if not 300 <= self.status <= 599:
            raise ValueError("HttpError.status must be in 300..599")


@dataclass(frozen=True)
class Malformed(Fault):
    """Answer 200 with a broken body of the given `kind` (see `MALFORMED_KINDS`).

    With ``rotate=False`` nothing is processed. With ``rotate=True`` the refresh is processed first exactly as it
    would be without the fault (so under ``rotation="always"`` the presented token is superseded) and only the body
    is broken: the client never learns the successor. The access token in the broken body is then a real one.
    """

    kind: str
    rotate: bool = False

    def __post_init__(self) -> None:
        if self.kind not in MALFORMED_KINDS:
            raise ValueError(f"unknown Malformed kind {self.kind!r}; known: {', '.join(sorted(MALFORMED_KINDS))}")


@dataclass(frozen=True)
class DropAfterRotate(Fault):
    """Process the refresh fully (rotate, record the successor), then close the connection without answering."""


@dataclass(frozen=True)
class DropBeforeProcessing(Fault):
    """Close the connection without answering and without processing (the refresh token is not consumed)."""


# ---------------------------------------------------------------------------------------------------- stats


@dataclass(frozen=True)
class SimulatorStats:
    """A snapshot of what the token endpoint did.

    `refresh_calls` counts every ``POST /token``; `successes` every 200 token response delivered (grace replays
    included); `errors` maps an error code to its count (``invalid_grant``, ``invalid_client``, ...,
    ``server_error`` for 5xx `HttpError` faults, ``malformed`` for `Malformed` faults, ``dropped`` for both drop
    faults); `grace_replays` the superseded-token replays answered within the grace window; `reuse_detections` the
    families revoked because a superseded token was presented; `rotations` the refresh tokens superseded.
    """

    refresh_calls: int = 0
    successes: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)
    grace_replays: int = 0
    reuse_detections: int = 0
    rotations: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as plain JSON-serializable data."""
        return {
            "refresh_calls": self.refresh_calls,
            "successes": self.successes,
            "errors": dict(self.errors),
            "grace_replays": self.grace_replays,
            "reuse_detections": self.reuse_detections,
            "rotations": self.rotations,
        }


# ------------------------------------------------------------------------------------------- internal state


@dataclass(eq=False)
class _Family:
    scope: tuple[str, ...]
    current: str
    predecessor: str | None = None
    superseded_at: float = 0.0
    successor_access: str | None = None  # the access token issued together with `current` when it was minted
    successes: int = 0
    revoked: bool = False


@dataclass(eq=False)
class _Access:
    family: _Family
    scope: tuple[str, ...]
    expires_at: float


@dataclass(frozen=True)
class _Reply:
    status: int = 200
    body: bytes = b""
    content_type: str | None = _JSON
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False
    drop: bool = False


@dataclass(frozen=True)
class _OAuthError:
    status: int
    code: str
    description: str
    challenge: str | None = None
    close: bool = False


@dataclass(frozen=True)
class _Issued:
    payload: dict[str, Any]
    access_token: str
    scope: tuple[str, ...]


@dataclass(eq=False)
class _DeviceCode:
    user_code: str
    scope: tuple[str, ...]
    expires_at: float
    state: str = "pending"  # -> "approved" | "denied"; "approved" -> "redeemed"
    with_refresh_token: bool = True


_DROP: Final = _Reply(drop=True)


def _json_bytes(data: object) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _number(value: float) -> int | float:
    """JSON number for a duration: an int when whole, else the float."""
    return int(value) if float(value).is_integer() else value


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _valid_scope_token(token: str) -> bool:
    # RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
    return bool(token) and all(c == "\x21" or "\x23" <= c <= "\x5b" or "\x5d" <= c <= "\x7e" for c in token)


def _error_reply(err: _OAuthError) -> _Reply:
    headers = (("WWW-Authenticate", err.challenge),) if err.challenge else ()
    body = _json_bytes({"error": err.code, "error_description": err.description})
    return _Reply(status=err.status, body=body, headers=headers, close=err.close)


def _guess_content_type(body: bytes) -> str:
    head = body.lstrip()[:1]
    if head in (b"{", b"["):
        return _JSON
    if head == b"<":
        return "text/html; charset=utf-8"
    return "text/plain; charset=utf-8"


#: Malformed answers that are not JSON objects at all: a proxy's error page, plain text, nothing.
_FIXED_BODIES: dict[str, tuple[bytes, str]] = {
    "html": (
        b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><h1>502</h1></body></html>",
        "text/html; charset=utf-8",
    ),
    "non_json": (b"Service temporarily unavailable, please try again later.\n", _JSON),
    "empty": (b"", _JSON),
}


def _malformed_body(kind: str, access_token: str, scope: tuple[str, ...], ttl: float) -> tuple[bytes, str]:
    if kind in _FIXED_BODIES:
        return _FIXED_BODIES[kind]
    expires_in = _number(ttl)
    base: dict[str, Any] = {"access_token": access_token, "token_type": "Bearer", "expires_in": expires_in}
    if scope:
        base["scope"] = " ".join(scope)
    if kind == "json_array":
        return _json_bytes([base]), _JSON
    return _json_bytes(_broken(kind, base, expires_in)), _JSON


def _broken(kind: str, base: dict[str, Any], expires_in: float | int) -> dict[str, Any]:
    """The token response `base` with the one field `kind` names broken."""
    if kind == "missing_access_token":
        del base["access_token"]
    elif kind == "missing_expires_in":
        del base["expires_in"]
    elif kind == "wrong_types":
        base["access_token"] = 12345
        base["expires_in"] = [expires_in]
    elif kind == "expires_in_string":
        base["expires_in"] = str(expires_in)
    elif kind == "expires_in_negative":
        base["expires_in"] = -3600
    elif kind == "expires_in_huge":
        base["expires_in"] = 10**12
    elif kind == "wrong_token_type":
        base["token_type"] = "mac"
    elif kind == "oversized":
        base = {"padding": "x" * _OVERSIZED_PADDING, **base}
    return base


# ---------------------------------------------------------------------------------------------------- HTTP


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many clients connect at once in the concurrency tests and benchmarks

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, simulator: ProviderSimulator) -> None:
        self.address_family = family
        self.simulator = simulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call socket.getfqdn(), a reverse DNS lookup that can take seconds.
        socketserver.TCPServer.server_bind(self)
        sockname = self.socket.getsockname()
        self.server_name = str(sockname[0])
        self.server_port = int(sockname[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Client disconnects and shutdown races are expected; never print tracebacks."""

    def track(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(conn)

    def close_connections(self) -> None:
        """Wake every handler thread blocked on an idle keep-alive connection so it exits."""
        with self._connections_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "grantkeeper-simulator/1"
    timeout = _IDLE_TIMEOUT
    disable_nagle_algorithm = True
    wbufsize = -1  # buffered: status line, headers and body leave in one write, flushed per response

    @property
    def _sim(self) -> ProviderSimulator:
        server = self.server
        assert isinstance(server, _Server)
        return server.simulator

    def setup(self) -> None:
        super().setup()
        server = self.server
        assert isinstance(server, _Server)
        server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            server = self.server
            assert isinstance(server, _Server)
            server.untrack(self.connection)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request log lines on stderr."""

    def _path(self) -> str:
        return urllib.parse.urlsplit(self.path).path

    def _read_body(self) -> tuple[bytes, _Reply | None]:
        """The request body, or a reply that ends the exchange (framing we cannot or will not handle).

        Any such reply also marks the connection for closing: whatever answer goes out, the stream is out of sync.
        """
        body, reply = self._read_body_framed()
        if reply is not None:
            self.close_connection = True
        return body, reply

    def _read_body_framed(self) -> tuple[bytes, _Reply | None]:
        if self.headers.get("Transfer-Encoding") is not None:
            body = _json_bytes({"error": "invalid_request", "error_description": "send a Content-Length body"})
            return b"", _Reply(status=411, body=body, close=True)
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            return b"", None
        try:
            length = int(raw_length.strip())
            if length < 0:
                raise ValueError
        except ValueError:
            body = _json_bytes({"error": "invalid_request", "error_description": "bad Content-Length"})
            return b"", _Reply(status=400, body=body, close=True)
        if length > _MAX_BODY:
            if length <= _MAX_DISCARD:
                self.rfile.read(length)
            body = _json_bytes({"error": "invalid_request", "error_description": "request body too large"})
            return b"", _Reply(status=413, body=body, close=True)
        data = self.rfile.read(length)
        if len(data) < length:
            return b"", _DROP
        return data, None

    def _send(self, reply: _Reply) -> None:
        if reply.drop:
            self.close_connection = True
            return
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        if reply.content_type is not None:
            self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Pragma", "no-cache")
        if reply.close or self.close_connection:
            self.send_header("Connection", "close")  # also sets self.close_connection
        self.end_headers()
        if reply.body:
            self.wfile.write(reply.body)
        self.wfile.flush()

    def do_POST(self) -> None:
        body, framing = self._read_body()
        if framing is not None and framing.drop:
            self._send(framing)
            return
        if self._path() == "/resource":  # an upload to the protected resource: the body is read and discarded
            self._send(framing or self._sim._handle_resource_request(self.headers.get("Authorization")))
            return
        if self._path() == "/device_authorization":
            self._send(framing or self._sim._handle_device_authorization(
                self.headers.get("Authorization"), self.headers.get("Content-Type"), body))  # fmt: skip
            return
        if self._path() != "/token":
            self._send(framing or _Reply(status=404, body=_json_bytes({"error": "not_found"})))
            return
        reply = self._sim._handle_token_request(
            authorization=self.headers.get("Authorization"),
            content_type=self.headers.get("Content-Type"),
            body=body,
            framing=framing,
        )
        self._send(reply)

    def do_GET(self) -> None:
        _, framing = self._read_body()
        if framing is not None:
            self._send(framing)
            return
        path = self._path()
        if path == "/resource":
            reply = self._sim._handle_resource_request(self.headers.get("Authorization"))
        elif path == "/stats":
            reply = _Reply(body=_json_bytes(self._sim.stats.as_dict()))
        elif (issuer_path := self._sim._metadata_issuer_path(path)) is not None:
            reply = _Reply(body=self._sim._metadata_body(issuer_path))
        elif path == "/token":
            body = _json_bytes({"error": "invalid_request", "error_description": "use POST"})
            reply = _Reply(status=405, body=body, headers=(("Allow", "POST"),))
        else:
            reply = _Reply(status=404, body=_json_bytes({"error": "not_found"}))
        self._send(reply)


# ----------------------------------------------------------------------------------------------- simulator


def _refresh_request(form: dict[str, str], *, scope_required: bool) -> tuple[str, tuple[str, ...] | None] | _OAuthError:
    """A refresh_token grant's token and requested scope (None: not given), or what is wrong with the request."""
    grant_type = form.get("grant_type")
    if grant_type is None:
        return _OAuthError(400, "invalid_request", "missing grant_type")
    if grant_type != "refresh_token":
        return _OAuthError(400, "unsupported_grant_type", "only refresh_token and device_code grants are supported")
    token = form.get("refresh_token")
    if token is None:
        return _OAuthError(400, "invalid_request", "missing refresh_token")
    requested = tuple(dict.fromkeys(form["scope"].split())) if "scope" in form else None
    if requested is None and scope_required:
        return _OAuthError(400, "invalid_request", "scope is required on refresh")
    if requested is not None and not all(_valid_scope_token(s) for s in requested):
        return _OAuthError(400, "invalid_scope", "malformed scope")
    return token, requested


def _basic_credentials(credentials: str) -> tuple[str, str] | None:
    """The client id and secret of HTTP Basic credentials, None if they are malformed."""
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        encoded_id, colon, encoded_secret = decoded.partition(":")
        # RFC 6749 §2.3.1: both parts are application/x-www-form-urlencoded before Basic encoding
        client_id = urllib.parse.unquote_plus(encoded_id, errors="strict")
        secret = urllib.parse.unquote_plus(encoded_secret, errors="strict")
    except (binascii.Error, ValueError):
        return None
    return (client_id, secret) if colon else None


class ProviderSimulator:
    """An OAuth 2.0 authorization server's token endpoint, served over HTTP on loopback.

    Use it as a context manager (``with ProviderSimulator() as sim:``) or call `start` / `stop`. Grants are made
    with `issue_grant`; clients refresh them at `url`. See docs/simulator.md.
    """

    def __init__(
        self,
        *,
        rotation: str = "always",
        reuse_grace: float = 0.0,
        reuse_detection: bool = True,
        access_ttl: float = 3600.0,
        conditional_every: int = 3,
        echo_refresh_token: bool = False,
        response_quirks: frozenset[str] | tuple[str, ...] = (),
        refresh_token_ttl: float = 90 * 86400.0,
        grace_returns_previous_access: bool = False,
        client_id: str = "sim-client",
        client_secret: str | None = None,
        auth_methods: tuple[str, ...] = ("client_secret_basic", "client_secret_post"),
        client_public_key: bytes | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        device_code_ttl: float = 600.0,
        device_interval: float | None = 5.0,
    ) -> None:
        self._device_ttl = float(device_code_ttl)
        self._device_interval = device_interval
        self._device_codes: dict[str, _DeviceCode] = {}
        self._user_codes: dict[str, str] = {}
        self._rotation = rotation
        self._reuse_grace = float(reuse_grace)
        self._reuse_detection = reuse_detection
        self._access_ttl = float(access_ttl)
        self._conditional_every = conditional_every
        self._echo = echo_refresh_token
        self._quirks = frozenset(response_quirks)
        self._refresh_ttl = float(refresh_token_ttl)
        self._grace_previous_access = grace_returns_previous_access
        self._client_id = client_id
        self._client_secret = client_secret if client_secret is not None else secrets.token_urlsafe(24)
        self._auth_methods = tuple(auth_methods)
        self._host = host
        self._port = port
        self._clock = clock
        self._check_settings(has_public_key=client_public_key is not None)
        self._client_key = load_public_key(client_public_key) if client_public_key is not None else None
        self._seen_jti: set[str] = set()
        self._metadata_override: bytes | None = None
        self._metadata_styles: tuple[str, ...] = ("rfc8414", "oidc")

        self._lock = threading.Lock()
        self._refresh_tokens: dict[str, _Family] = {}
        self._access_tokens: dict[str, _Access] = {}
        self._faults: deque[Fault] = deque()
        self._resource_delays: deque[float] = deque()
        self._refresh_calls = 0
        self._successes = 0
        self._errors: dict[str, int] = {}
        self._grace_replays = 0
        self._reuse_detections = 0
        self._rotations = 0

        self._state_lock = threading.Lock()
        self._state = "new"  # -> "running" -> "stopped"
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def _check_settings(self, *, has_public_key: bool) -> None:
        """`ValueError` for a setting out of range, naming the setting (before anything is loaded or served)."""
        if self._rotation not in ROTATION_MODES:
            raise ValueError(f"rotation must be one of {', '.join(ROTATION_MODES)}")
        if not self._reuse_grace >= 0:
            raise ValueError("reuse_grace must be >= 0")
        if not self._access_ttl > 0:
            raise ValueError("access_ttl must be > 0")
        if self._conditional_every < 1:
            raise ValueError("conditional_every must be >= 1")
        if not self._auth_methods or any(m not in AUTH_METHODS for m in self._auth_methods):
            raise ValueError(f"auth_methods must be a non-empty subset of {', '.join(AUTH_METHODS)}")
        if not self._client_id:
            raise ValueError("client_id must not be empty")
        if unknown := self._quirks - RESPONSE_QUIRKS:
            known = ", ".join(sorted(RESPONSE_QUIRKS))
            raise ValueError(f"unknown response quirk {sorted(unknown)[0]!r}; known: {known}")
        if ("private_key_jwt" in self._auth_methods) != has_public_key:
            raise ValueError("give client_public_key (PEM) exactly when auth_methods include private_key_jwt")
        if not 0 <= self._port <= 65535:
            raise ValueError("port must be in 0..65535")
        if not self._device_ttl > 0 or (self._device_interval is not None and not self._device_interval > 0):
            raise ValueError("device_code_ttl and device_interval must be > 0")

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bind and serve from a daemon thread. A simulator starts once."""
        with self._state_lock:
            if self._state == "running":
                raise RuntimeError("ProviderSimulator is already started")
            if self._state == "stopped":
                raise RuntimeError("ProviderSimulator was stopped and cannot be restarted; create a new one")
            family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
            server = _Server((self._host, self._port), family, self)
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": _POLL_INTERVAL},
                name=f"ProviderSimulator:{server.server_port}",
                daemon=True,
            )
            thread.start()
            self._server, self._thread, self._state = server, thread, "running"

    def stop(self) -> None:
        """Stop serving, close the listening socket and every open connection. Idempotent."""
        with self._state_lock:
            if self._state == "stopped":
                return
            self._state = "stopped"
            server, thread = self._server, self._thread
        self._stopping.set()  # wakes requests sleeping in a Delay fault
        if server is not None:
            server.shutdown()
            server.server_close()
            server.close_connections()
        if thread is not None:
            thread.join(timeout=5.0)

    def __enter__(self) -> ProviderSimulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _require_not_stopped(self, what: str) -> None:
        if self._state == "stopped":
            raise RuntimeError(f"ProviderSimulator is stopped; cannot {what}")

    def _address(self) -> tuple[str, int]:
        with self._state_lock:
            if self._state == "new":
                raise RuntimeError("ProviderSimulator is not started; call start() or use it as a context manager")
            if self._state == "stopped":
                raise RuntimeError("ProviderSimulator is stopped; its address is no longer served")
            assert self._server is not None
            return self._server.server_name, self._server.server_port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` of the running server."""
        host, port = self._address()
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        """The token endpoint, ``http://HOST:PORT/token``."""
        return f"{self.base_url}/token"

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def client_secret(self) -> str:
        return self._client_secret

    # ---------------------------------------------------------------------------------------- grants

    def _new_token(self, *, jwt: bool = False) -> str:
        while True:
            token = secrets.token_urlsafe(32)
            if jwt:  # unsigned-looking but well-formed: clients read `exp` from it, they never verify it
                claims = {"exp": int(time.time() + self._access_ttl), "jti": token}
                token = ".".join(_b64url(_json_bytes(part)) for part in ({"alg": "HS256", "typ": "JWT"}, claims))
                token += "." + _b64url(secrets.token_bytes(32))
            if token not in self._refresh_tokens and token not in self._access_tokens:
                return token

    def issue_grant(self, *, scope: str = "read write") -> str:
        """Create a new grant family and return its first refresh token."""
        self._require_not_stopped("issue grants")
        scopes = tuple(dict.fromkeys(scope.split()))
        if not all(_valid_scope_token(s) for s in scopes):
            raise ValueError("scope contains characters not allowed by RFC 6749 section 3.3")
        with self._lock:
            token = self._new_token()
            self._refresh_tokens[token] = _Family(scope=scopes, current=token)
            return token

    def revoke_family(self, refresh_token: str) -> None:
        """Revoke every token (refresh and access) of the family `refresh_token` belongs to."""
        with self._lock:
            family = self._refresh_tokens.get(refresh_token)
            if family is None:
                raise KeyError("unknown refresh token")
            family.revoked = True

    def is_active(self, refresh_token: str) -> bool:
        """Whether `refresh_token` is the current token of a non-revoked family.

        A superseded token still inside its grace window is not active (it is only tolerated).
        """
        with self._lock:
            family = self._refresh_tokens.get(refresh_token)
            return family is not None and not family.revoked and family.current == refresh_token

    # ---------------------------------------------------------------------------------------- faults

    def inject(self, fault: Fault, *, times: int = 1) -> None:
        """Apply `fault` to each of the next `times` token requests (queued FIFO after earlier injections)."""
        self._require_not_stopped("inject faults")
        if type(fault) is Fault or not isinstance(fault, Fault):
            raise TypeError("inject a concrete fault: Delay, HttpError, Malformed, DropAfterRotate, ...")
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._faults.extend([fault] * times)

    def delay_resource(self, seconds: float, *, times: int = 1) -> None:
        """Sleep `seconds` (real time) before answering each of the next `times` ``/resource`` requests, to play a
        protected resource (or a machine) slower than its client's timeout. The answer after the sleep is as usual."""
        self._require_not_stopped("delay the resource")
        Delay(seconds)  # the same validation as the token endpoint's delay
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._resource_delays.extend([float(seconds)] * times)

    def issued_tokens(self) -> frozenset[str]:
        """Every refresh and access token this simulator has issued (for leak tests: none may appear in logs,
        errors or files)."""
        with self._lock:
            return frozenset(self._refresh_tokens) | frozenset(self._access_tokens) | frozenset(self._device_codes)

    def clear_faults(self) -> None:
        """Forget every queued fault and resource delay."""
        with self._lock:
            self._faults.clear()
            self._resource_delays.clear()

    # ----------------------------------------------------------------------------------------- stats

    @property
    def stats(self) -> SimulatorStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return SimulatorStats(
                refresh_calls=self._refresh_calls,
                successes=self._successes,
                errors=dict(self._errors),
                grace_replays=self._grace_replays,
                reuse_detections=self._reuse_detections,
                rotations=self._rotations,
            )

    def reset_stats(self) -> None:
        """Zero every counter (grants, tokens and queued faults are kept)."""
        with self._lock:
            self._refresh_calls = self._successes = 0
            self._grace_replays = self._reuse_detections = self._rotations = 0
            self._errors.clear()

    def _count_error(self, code: str) -> None:
        self._errors[code] = self._errors.get(code, 0) + 1

    # -------------------------------------------------------------------------------------- requests

    def _handle_token_request(
        self, *, authorization: str | None, content_type: str | None, body: bytes, framing: _Reply | None
    ) -> _Reply:
        with self._lock:
            self._refresh_calls += 1
            fault = self._faults.popleft() if self._faults else None
        if isinstance(fault, Delay):
            if self._stopping.wait(fault.seconds):
                return _DROP
            fault = None
        with self._lock:
            return self._token_reply_locked(fault, authorization, content_type, body, framing)

    def _token_reply_locked(
        self,
        fault: Fault | None,
        authorization: str | None,
        content_type: str | None,
        body: bytes,
        framing: _Reply | None,
    ) -> _Reply:
        early = self._unprocessed_reply_locked(fault, framing)
        if early is not None:
            return early
        outcome = self._process_locked(authorization, content_type, body)
        if isinstance(outcome, _OAuthError):
            self._count_error(outcome.code)
            return _error_reply(outcome)
        return self._processed_reply_locked(fault, outcome)

    def _unprocessed_reply_locked(self, fault: Fault | None, framing: _Reply | None) -> _Reply | None:
        """The answer to a request that a fault or bad framing stops before it is processed (None: process it)."""
        if isinstance(fault, DropBeforeProcessing):
            self._count_error("dropped")
            return _DROP
        if isinstance(fault, HttpError):
            return self._http_error_reply(fault)
        if isinstance(fault, Malformed) and not fault.rotate:
            self._count_error("malformed")
            unregistered = secrets.token_urlsafe(32)
            payload, ctype = _malformed_body(fault.kind, unregistered, (), self._access_ttl)
            return _Reply(body=payload, content_type=ctype)
        if framing is not None:
            self._count_error("invalid_request")
            return framing
        return None

    def _processed_reply_locked(self, fault: Fault | None, outcome: _Issued) -> _Reply:
        """The answer to a processed refresh: the token response, unless a fault loses it."""
        if isinstance(fault, Malformed):  # rotate=True: processed, then the answer is lost in a broken body
            self._count_error("malformed")
            payload, ctype = _malformed_body(fault.kind, outcome.access_token, outcome.scope, self._access_ttl)
            return _Reply(body=payload, content_type=ctype)
        if isinstance(fault, DropAfterRotate):
            self._count_error("dropped")
            return _DROP
        self._successes += 1
        return _Reply(body=_json_bytes(outcome.payload))

    def _http_error_reply(self, fault: HttpError) -> _Reply:
        if fault.status >= 500:
            self._count_error("server_error")
        else:
            self._count_error(fault.error or f"http_{fault.status}")
        headers = (("Retry-After", fault.retry_after),) if fault.retry_after is not None else ()
        if fault.body is not None:
            return _Reply(
                status=fault.status, body=fault.body, content_type=_guess_content_type(fault.body), headers=headers
            )
        if fault.error is not None:
            return _Reply(status=fault.status, body=_json_bytes({"error": fault.error}), headers=headers)
        return _Reply(status=fault.status, content_type=None, headers=headers)

    def _process_locked(
        self, authorization: str | None, content_type: str | None, body: bytes
    ) -> _OAuthError | _Issued:
        form = self._client_form(authorization, content_type, body)
        if isinstance(form, _OAuthError):
            return form
        if form.get("grant_type") == _DEVICE_GRANT:
            return self._redeem_device_code_locked(form)
        request = _refresh_request(form, scope_required="scope_required" in self._quirks)
        if isinstance(request, _OAuthError):
            return request
        token, requested = request
        family = self._live_family_locked(token)
        if isinstance(family, _OAuthError):
            return family
        now = self._clock()
        if token != family.current:
            return self._spent_token_locked(family, token, requested, now)
        return self._issue_locked(family, token, requested, now)

    def _client_form(
        self, authorization: str | None, content_type: str | None, body: bytes
    ) -> dict[str, str] | _OAuthError:
        """The request's parameters once its client is authenticated, or why it is refused."""
        form = self._parse_form(content_type, body)
        if isinstance(form, _OAuthError):
            return form
        problem = self._authenticate(authorization, form)
        return form if problem is None else problem

    def _live_family_locked(self, token: str) -> _Family | _OAuthError:
        family = self._refresh_tokens.get(token)
        if family is None:
            return _OAuthError(400, "invalid_grant", "unknown refresh token")
        if family.revoked:
            return _OAuthError(400, "invalid_grant", "refresh token has been revoked")
        return family

    def _spent_token_locked(
        self, family: _Family, token: str, requested: tuple[str, ...] | None, now: float
    ) -> _OAuthError | _Issued:
        """A refresh token that is not the family's current one: a replay inside the grace, or reuse."""
        if token == family.predecessor and now - family.superseded_at < self._reuse_grace:
            return self._grace_replay_locked(family, requested, now)
        if self._reuse_detection:
            family.revoked = True
            self._reuse_detections += 1
            return _OAuthError(400, "invalid_grant", "refresh token was already used; the grant is revoked")
        return _OAuthError(400, "invalid_grant", "refresh token was already used")

    def _issue_locked(
        self, family: _Family, token: str, requested: tuple[str, ...] | None, now: float
    ) -> _OAuthError | _Issued:
        """The family's current token: a new access token, and a successor refresh token when this one rotates."""
        if requested is not None and not set(requested) <= set(family.scope):
            return _OAuthError(400, "invalid_scope", "requested scope exceeds the granted scope")
        granted = requested if requested is not None else family.scope

        family.successes += 1
        if self._rotation == "always":
            rotate = True
        elif self._rotation == "conditional":
            rotate = family.successes % self._conditional_every == 0
        else:
            rotate = False

        access = self._mint_access_locked(family, granted, now)
        payload = self._payload(access, granted)
        if rotate:
            successor = self._new_token()
            self._refresh_tokens[successor] = family
            family.predecessor, family.superseded_at = token, now
            family.current, family.successor_access = successor, access
            self._rotations += 1
            payload["refresh_token"] = successor
        elif self._echo:
            payload["refresh_token"] = token
        return _Issued(payload=payload, access_token=access, scope=granted)

    def _grace_replay_locked(
        self, family: _Family, requested: tuple[str, ...] | None, now: float
    ) -> _OAuthError | _Issued:
        if requested is not None and not set(requested) <= set(family.scope):
            return _OAuthError(400, "invalid_scope", "requested scope exceeds the granted scope")
        granted = requested if requested is not None else family.scope
        previous_token = family.successor_access
        previous = self._access_tokens.get(previous_token) if previous_token is not None else None
        if self._grace_previous_access and previous_token is not None and previous is not None:
            # As django-oauth-toolkit does: the same token with a fresh expires_in in the body, while the token itself
            # keeps its first expiry (the resource server rejects it once that has passed).
            access = previous_token
            granted = previous.scope
        else:
            access = self._mint_access_locked(family, granted, now)
        self._grace_replays += 1
        payload = self._payload(access, granted)
        payload["refresh_token"] = family.current
        return _Issued(payload=payload, access_token=access, scope=granted)

    def _mint_access_locked(self, family: _Family, scope: tuple[str, ...], now: float) -> str:
        access = self._new_token(jwt="jwt_access_token" in self._quirks)
        self._access_tokens[access] = _Access(family=family, scope=scope, expires_at=now + self._access_ttl)
        return access

    def _payload(self, access: str, scope: tuple[str, ...]) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": _number(self._access_ttl),
        }
        if "expires_in_string" in self._quirks:
            payload["expires_in"] = str(payload["expires_in"])
        if "no_expires_in" in self._quirks:
            del payload["expires_in"]
        for name in ("refresh_token_expires_in", "x_refresh_token_expires_in"):
            if name in self._quirks:
                payload[name] = _number(self._refresh_ttl)
        if scope:
            payload["scope"] = " ".join(scope)
        return payload

    @staticmethod
    def _parse_form(content_type: str | None, body: bytes) -> dict[str, str] | _OAuthError:
        media_type = (content_type or "").split(";", 1)[0].strip().lower()
        if media_type != "application/x-www-form-urlencoded":
            return _OAuthError(400, "invalid_request", "Content-Type must be application/x-www-form-urlencoded")
        try:
            pairs = urllib.parse.parse_qsl(
                body.decode("ascii"), keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=64
            )
        except ValueError:  # includes UnicodeDecodeError
            return _OAuthError(400, "invalid_request", "malformed form body")
        form: dict[str, str] = {}
        seen: set[str] = set()
        for name, value in pairs:
            if name in seen:
                return _OAuthError(400, "invalid_request", "a parameter is repeated")
            seen.add(name)
            if value:  # RFC 6749 §3.1: empty parameters are treated as omitted
                form[name] = value
        return form

    def _check_credentials(self, client_id: str, secret: str) -> bool:
        id_ok = secrets.compare_digest(client_id.encode(), self._client_id.encode())
        secret_ok = secrets.compare_digest(secret.encode(), self._client_secret.encode())
        return id_ok and secret_ok

    def _check_client_assertion(self, authorization: str | None, form: dict[str, str]) -> _OAuthError | None:
        if authorization is not None or "client_secret" in form:
            return _OAuthError(400, "invalid_request", "more than one client authentication method used")
        if "private_key_jwt" not in self._auth_methods or self._client_key is None:
            return _OAuthError(401, "invalid_client", "private_key_jwt is not allowed")
        if form.get("client_assertion_type") != _ASSERTION_TYPE:
            return _OAuthError(401, "invalid_client", "unsupported client_assertion_type")
        body_id = form.get("client_id")
        if body_id is not None and body_id != self._client_id:
            return _OAuthError(401, "invalid_client", "client_id does not match the assertion")
        problem = check_assertion(
            form.get("client_assertion", ""), key=self._client_key, client_id=self._client_id,
            audiences=(self.url, self.base_url), now=time.time(), seen_jti=self._seen_jti,
        )  # fmt: skip
        return _OAuthError(401, "invalid_client", problem) if problem else None

    def _authenticate(self, authorization: str | None, form: dict[str, str]) -> _OAuthError | None:
        if "client_assertion" in form or "client_assertion_type" in form:
            return self._check_client_assertion(authorization, form)
        body_id = form.get("client_id")
        body_secret = form.get("client_secret")
        if authorization is not None:
            return self._authenticate_basic(authorization, body_id, body_secret)
        return self._authenticate_in_body(body_id, body_secret)

    def _authenticate_basic(
        self, authorization: str, body_id: str | None, body_secret: str | None
    ) -> _OAuthError | None:
        scheme, _, credentials = authorization.strip().partition(" ")
        refused = self._basic_refused(scheme, body_secret)
        if refused is not None:
            return refused
        pair = _basic_credentials(credentials)
        if pair is None:
            return _OAuthError(401, "invalid_client", "malformed Basic credentials", _BASIC_CHALLENGE)
        client_id, secret = pair
        if body_id is not None and body_id != client_id:
            return _OAuthError(400, "invalid_request", "client_id in the body differs from the Basic credentials")
        if not self._check_credentials(client_id, secret):
            return _OAuthError(401, "invalid_client", "client authentication failed", _BASIC_CHALLENGE)
        return None

    def _basic_refused(self, scheme: str, body_secret: str | None) -> _OAuthError | None:
        """Why an Authorization header is refused before its credentials are read."""
        if scheme.lower() != "basic":
            return _OAuthError(401, "invalid_client", "unsupported authentication scheme", _BASIC_CHALLENGE)
        if body_secret is not None:
            return _OAuthError(400, "invalid_request", "more than one client authentication method used")
        if "client_secret_basic" not in self._auth_methods:
            return _OAuthError(401, "invalid_client", "client_secret_basic is not allowed", _BASIC_CHALLENGE)
        return None

    def _authenticate_in_body(self, body_id: str | None, body_secret: str | None) -> _OAuthError | None:
        if body_secret is not None:
            if "client_secret_post" not in self._auth_methods:
                return _OAuthError(401, "invalid_client", "client_secret_post is not allowed")
            if body_id is None or not self._check_credentials(body_id, body_secret):
                return _OAuthError(401, "invalid_client", "client authentication failed")
            return None
        if body_id is not None and "none" in self._auth_methods:
            if secrets.compare_digest(body_id.encode(), self._client_id.encode()):
                return None
            return _OAuthError(401, "invalid_client", "unknown client")
        return _OAuthError(401, "invalid_client", "client authentication required")

    # ------------------------------------------------------------------------------ device flow (RFC 8628)

    @property
    def device_authorization_url(self) -> str:
        """The device authorization endpoint (RFC 8628 §3.1)."""
        return f"{self.base_url}/device_authorization"

    def approve(self, user_code: str, *, refresh_token: bool = True) -> None:
        """The user enters `user_code` and approves: the next poll gets tokens (without a refresh token when
        `refresh_token` is False, as servers do without an offline scope)."""
        self._decide(user_code, "approved", refresh_token)

    def deny(self, user_code: str) -> None:
        """The user enters `user_code` and denies: the next poll gets ``access_denied``."""
        self._decide(user_code, "denied", True)

    def _decide(self, user_code: str, state: str, refresh_token: bool) -> None:
        with self._lock:
            device_code = self._user_codes.get(user_code.upper())
            if device_code is None:
                raise KeyError("unknown user code")
            record = self._device_codes[device_code]
            if record.state != "pending":
                raise ValueError(f"user code already {record.state}")
            record.state, record.with_refresh_token = state, refresh_token

    def _handle_device_authorization(self, authorization: str | None, content_type: str | None, body: bytes) -> _Reply:
        with self._lock:
            form = self._parse_form(content_type, body)
            if isinstance(form, _OAuthError):
                return _error_reply(form)
            problem = self._authenticate(authorization, form)
            if problem is not None:
                self._count_error(problem.code)
                return _error_reply(problem)
            scope = tuple(dict.fromkeys(form.get("scope", "read write").split()))
            if not all(_valid_scope_token(s) for s in scope):
                return _error_reply(_OAuthError(400, "invalid_scope", "malformed scope"))
            device_code = self._new_token()
            while True:
                letters = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(8))
                user_code = f"{letters[:4]}-{letters[4:]}"
                if user_code not in self._user_codes:
                    break
            self._device_codes[device_code] = _DeviceCode(user_code, scope, self._clock() + self._device_ttl)
            self._user_codes[user_code] = device_code
        answer: dict[str, Any] = {
            "device_code": device_code, "user_code": user_code, "verification_uri": f"{self.base_url}/device",
            "verification_uri_complete": f"{self.base_url}/device?user_code={user_code}",
            "expires_in": _number(self._device_ttl),
        }  # fmt: skip
        if self._device_interval is not None:
            answer["interval"] = _number(self._device_interval)
        return _Reply(body=_json_bytes(answer))

    def _redeem_device_code_locked(self, form: dict[str, str]) -> _OAuthError | _Issued:
        device_code = form.get("device_code")
        if device_code is None:
            return _OAuthError(400, "invalid_request", "missing device_code")
        record = self._device_codes.get(device_code)
        if record is None or record.state == "redeemed":
            return _OAuthError(400, "invalid_grant", "unknown or already used device code")
        now = self._clock()
        if now >= record.expires_at:
            return _OAuthError(400, "expired_token", "the device code has expired")
        if record.state == "denied":
            return _OAuthError(400, "access_denied", "the user denied the request")
        if record.state == "pending":
            return _OAuthError(400, "authorization_pending", "the user has not answered yet")
        record.state = "redeemed"
        refresh = self._new_token()
        family = _Family(scope=record.scope, current=refresh)
        self._refresh_tokens[refresh] = family
        access = self._mint_access_locked(family, record.scope, now)
        payload = self._payload(access, record.scope)
        if record.with_refresh_token:
            payload["refresh_token"] = refresh
        return _Issued(payload=payload, access_token=access, scope=record.scope)

    def metadata(self, issuer_path: str = "") -> dict[str, Any]:
        """The RFC 8414 metadata served for the issuer ``base_url + issuer_path`` (one server, many issuers, as
        with tenants or realms: the well-known URL says which)."""
        document: dict[str, Any] = {
            "issuer": self.base_url + issuer_path,
            "authorization_endpoint": f"{self.base_url}/authorize",
            "token_endpoint": self.url,
            "token_endpoint_auth_methods_supported": list(self._auth_methods),
            "grant_types_supported": ["authorization_code", "refresh_token", _DEVICE_GRANT],
            "device_authorization_endpoint": f"{self.base_url}/device_authorization",
            "response_types_supported": ["code"],
        }
        if self._client_key is not None:
            document["token_endpoint_auth_signing_alg_values_supported"] = ["RS256", "ES256"]
        return document

    def serve_metadata(
        self, document: Mapping[str, Any] | bytes | None = None, *, at: tuple[str, ...] = ("rfc8414", "oidc")
    ) -> None:
        """Serve `document` (JSON-encoded, or bytes verbatim; None: `metadata()`) at the well-known URLs of the
        styles in `at` ("rfc8414", "oidc"; empty: none, every metadata URL is a 404)."""
        if unknown := set(at) - {"rfc8414", "oidc"}:
            raise ValueError(f"unknown metadata style {sorted(unknown)[0]!r}")
        body = document if isinstance(document, bytes) or document is None else _json_bytes(dict(document))
        with self._lock:
            self._metadata_override, self._metadata_styles = body, tuple(at)

    def _metadata_issuer_path(self, path: str) -> str | None:
        with self._lock:
            styles = self._metadata_styles
        if "rfc8414" in styles and (path == _RFC8414 or path.startswith(_RFC8414 + "/")):
            return path[len(_RFC8414) :]
        if "oidc" in styles and path.endswith(_OIDC):
            return path[: -len(_OIDC)]
        return None

    def _metadata_body(self, issuer_path: str) -> bytes:
        with self._lock:
            override = self._metadata_override
        return override if override is not None else _json_bytes(self.metadata(issuer_path))

    def _handle_resource_request(self, authorization: str | None) -> _Reply:
        with self._lock:
            delay = self._resource_delays.popleft() if self._resource_delays else 0.0
        if delay and self._stopping.wait(delay):
            return _DROP
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            challenge = 'Bearer realm="simulator"'
            return _Reply(status=401, body=_json_bytes({"ok": False}), headers=(("WWW-Authenticate", challenge),))
        with self._lock:
            record = self._access_tokens.get(token)
            valid = record is not None and not record.family.revoked and self._clock() < record.expires_at
        if valid:
            return _Reply(body=_json_bytes({"ok": True}))
        challenge = 'Bearer error="invalid_token"'
        body = _json_bytes({"ok": False, "error": "invalid_token"})
        return _Reply(status=401, body=body, headers=(("WWW-Authenticate", challenge),))
