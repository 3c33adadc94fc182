"""Real loopback servers for the proxy tests: an upstream API that records what reaches it, and a tiny app that
mounts `proxy_request` the way ``grantkeeper serve`` does, each served by uvicorn in a thread of the test."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from grantkeeper.serve.proxy import ProxyError, ProxyLimits, proxy_request
from grantkeeper.serve.upstream import api_session
from grantkeeper.tokens.transport import Network

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
CHUNK = 64 * 1024
_PATTERN = bytes(range(256)) * (CHUNK // 256)


def pattern(size: int) -> Iterator[bytes]:
    """`size` deterministic bytes in 64 KiB chunks, produced as they are sent (never whole in memory)."""
    left = size
    while left > 0:
        chunk = _PATTERN[: min(left, CHUNK)]
        left -= len(chunk)
        yield chunk


def pattern_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for chunk in pattern(size):
        digest.update(chunk)
    return digest.hexdigest()


class Served:
    """One ASGI app on 127.0.0.1 (an ephemeral port), served by uvicorn in a daemon thread until `stop`."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="on", ws="none", http="h11",
                                timeout_graceful_shutdown=2)  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                break
            self.thread.join(0.01)
        if not self.server.started:
            self.stop()
            raise RuntimeError("uvicorn did not start (its log above says why)")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    raw_path: str
    query: str
    headers: list[tuple[str, str]]
    body_bytes: int = 0
    peer: tuple[str, int] | None = None  # the proxy's end of the upstream connection

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name.lower()]
        return values[0] if values else None

    def has(self, name: str) -> bool:
        return any(k == name.lower() for k, _ in self.headers)


@dataclass
class Upstream:
    """The upstream API under ``/api``: a token must be in `valid`; routes behave as their names say."""

    valid: set[str] = field(default_factory=set)
    seen: list[Seen] = field(default_factory=list)
    other_origin: str = "http://127.0.0.1:9"

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{rest:path}", self.handle, methods=METHODS)])

    async def handle(self, request: Request) -> Response:
        raw = request.scope["raw_path"].decode("latin-1")
        seen = Seen(request.method, raw, request.scope["query_string"].decode("latin-1"),
                    [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]],
                    peer=request.scope.get("client"))  # fmt: skip
        self.seen.append(seen)
        rest = request.url.path.removeprefix("/api/")
        if rest == "reject-always":
            return _invalid_token()
        if rest == "plain-401":
            return Response("no", status_code=401)
        authorization = request.headers.get("authorization", "")
        if not authorization.startswith("Bearer ") or authorization.removeprefix("Bearer ") not in self.valid:
            await _drain(request, seen)
            return _invalid_token()
        return await self.route(rest, request, seen, authorization.removeprefix("Bearer "))

    async def route(self, rest: str, request: Request, seen: Seen, token: str) -> Response:  # noqa: PLR0911 (a route table: one return per path)
        if rest in {"things", "group%2Fproject/issues", "group/project/issues"}:
            headers = {"Set-Cookie": "session=upstream", "Connection": "X-Hop", "X-Hop": "1", "Keep-Alive": "timeout=5",
                       "X-Upstream": "kept", "Grantkeeper-Auth-Outcome": "spoofed"}  # fmt: skip
            return JSONResponse({"ok": True, "path": seen.raw_path}, headers=headers)
        if rest == "upload":
            digest = hashlib.sha256()
            async for chunk in request.stream():
                seen.body_bytes += len(chunk)
                digest.update(chunk)
            return JSONResponse({"bytes": seen.body_bytes, "sha256": digest.hexdigest()})
        if rest == "download":
            size = int(request.query_params["size"])
            headers = {"Content-Length": str(size)} if request.query_params.get("length") else None
            return StreamingResponse(_aiter(pattern(size)), headers=headers, media_type="application/octet-stream")
        if rest == "short-body":  # declares more than it sends: uvicorn then closes the connection mid-body
            return Response(b"x" * 10, headers={"Content-Length": "100"}, media_type="application/octet-stream")
        if rest == "declared-huge":
            return Response(b"x" * 2048, media_type="application/octet-stream")
        if rest == "echo-header":
            return Response("ok", headers={"X-Debug": f"authorization was Bearer {token}"})
        if rest == "redirect-same":
            return Response(status_code=302, headers={"Location": "/api/things"})
        if rest == "redirect-other":
            return Response(status_code=302, headers={"Location": f"{self.other_origin}/api/things"})
        if rest == "redirect-loop":
            return Response(status_code=302, headers={"Location": "/api/redirect-loop"})
        if rest == "redirect-307":
            await _drain(request, seen)
            return Response(status_code=307, headers={"Location": "/api/upload"})
        if rest == "slow":
            await asyncio.sleep(3)
            return Response("late")
        return JSONResponse({"ok": True, "path": seen.raw_path})


def _invalid_token() -> Response:
    return Response("rejected", status_code=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


async def _drain(request: Request, seen: Seen) -> None:
    async for chunk in request.stream():
        seen.body_bytes += len(chunk)


async def _aiter(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


class Tokens:
    """The grant's side, as the lead wires it to `AsyncKeeper`: the current token; a reported one is replaced
    (and the upstream learns the new one), like a keeper that invalidates and refreshes."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.issued: list[str] = []
        self.reported: list[str] = []
        self.current = self._new()

    def _new(self) -> str:
        token = "tok-" + secrets.token_urlsafe(32)
        self.issued.append(token)
        self.upstream.valid.add(token)
        return token

    async def get(self) -> str:
        return self.current

    async def report(self, token: str) -> None:
        self.reported.append(token)
        if token == self.current:
            self.current = self._new()


@dataclass
class ProxySettings:
    base_url: str
    limits: ProxyLimits = field(default_factory=ProxyLimits)


def proxy_app(
    settings: ProxySettings,
    get_token: Callable[[], Awaitable[str]],
    report: Callable[[str], Awaitable[None]],
    *,
    also_running: Callable[[], contextlib.AbstractAsyncContextManager[object]] = contextlib.nullcontext,
    make_client: Callable[[], aiohttp.ClientSession] | None = None,
) -> Starlette:
    """What ``grantkeeper serve`` mounts, reduced to the proxy route and an RFC 9457 error boundary.
    `also_running`: entered in the server's event loop for the app's lifetime (an `AsyncKeeper`, say);
    `make_client`: the upstream client (by default serve's, `api_session`)."""
    state: dict[str, aiohttp.ClientSession] = {}

    def serves() -> aiohttp.ClientSession:
        return api_session(Network(), settings.base_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with also_running(), (make_client or serves)() as client:
            state["client"] = client
            yield

    async def route(request: Request) -> Response:
        return await proxy_request(
            request, client=state["client"], base_url=settings.base_url, path=request.path_params["path"],
            get_token=get_token, report_rejected=report, limits=settings.limits,
        )  # fmt: skip

    async def problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProxyError)
        body = {"type": f"urn:grantkeeper:{exc.code}", "title": exc.code, "status": exc.http_status,
                "detail": exc.message}  # fmt: skip
        return JSONResponse(body, status_code=exc.http_status, media_type="application/problem+json")

    return Starlette(
        routes=[Route("/v1/proxy/{name}/{path:path}", route, methods=METHODS)],
        exception_handlers={ProxyError: problem},
        lifespan=lifespan,
    )
