"""`create_app`: the FastAPI application over a `Broker`, with the one error boundary and the request log.

The error boundary: every exception a route raises becomes an RFC 9457 problem here (`grantkeeper.serve.errors`
has the status table); nothing else in the package writes an error response, but for the 500 `Recorder` answers
a bug with. `Recorder` (grantkeeper.serve.recorder) writes one redacted JSON log line per request, counts it in
the metrics and adds the audit entry for token, refresh, rejected and proxy requests (refused ones included).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from grantkeeper import __version__
from grantkeeper._exceptions import GrantkeeperError, sanitize_provider_text
from grantkeeper.serve import console, routes_connect, routes_grants, routes_health, routes_proxy
from grantkeeper.serve.bodylimit import BodyLimit
from grantkeeper.serve.broker import Broker
from grantkeeper.serve.connect_sessions import ConnectSettings, HostedConnect
from grantkeeper.serve.errors import ServeError, problem, problem_for
from grantkeeper.serve.fastpath import FastPaths
from grantkeeper.serve.logs import get_logger
from grantkeeper.serve.proxy import ProxyLimits
from grantkeeper.serve.recorder import Recorder
from grantkeeper.serve.targets import ProxyTargets

__all__ = ["DEFAULT_MAX_BODY", "create_app"]

DEFAULT_MAX_BODY = 1 << 20

_DESCRIPTION = """An HTTP token broker over grantkeeper's keeper: callers with an API key (or on the Unix socket)
get access tokens of the grants their key reaches. No route ever returns a refresh token. Errors are RFC 9457
problem documents carrying grantkeeper's error code and the doctor's class (docs/serve.md)."""


def _respond(request: Request, answer: tuple[int, bytes, dict[str, str]], code: str) -> Response:
    status, body, headers = answer
    request.state.outcome = code
    return Response(body, status_code=status, headers=headers)


def create_app(broker: Broker, *, max_body: int = DEFAULT_MAX_BODY, proxy_limits: ProxyLimits | None = None,
               connect: ConnectSettings | None = None, hot_window: float | None = None) -> FastAPI:  # fmt: skip
    """The application. `max_body` caps API request bodies; proxied bodies stream under `proxy_limits` instead;
    `connect` sets hosted connect up (off without a public URL); `hot_window` is the scheduler's, which the
    console shows grants by. Close ``app.state.proxy_clients`` when done."""
    app = FastAPI(title="grantkeeper serve", version=__version__, description=_DESCRIPTION, docs_url=None,
                  redoc_url=None)  # fmt: skip
    app.state.broker = broker
    app.state.proxy_limits = proxy_limits or ProxyLimits()
    app.state.proxy_clients = routes_proxy.ProxyClients()
    app.state.proxy_targets = ProxyTargets(broker.store)
    app.add_middleware(FastPaths, owner=app, broker=broker)  # inside BodyLimit and Recorder
    app.add_middleware(BodyLimit, limit=max_body, streamed_prefix=routes_proxy.PREFIX)
    app.include_router(routes_grants.router)
    app.include_router(routes_proxy.router)
    app.include_router(routes_health.router)
    app.state.hosted_connect = HostedConnect(broker, connect or ConnectSettings())
    app.include_router(routes_connect.router)
    log = get_logger()

    @app.exception_handler(GrantkeeperError)
    async def on_keeper_error(request: Request, exc: GrantkeeperError) -> Response:
        return _respond(request, problem_for(exc, doctor_class=await broker.doctor_class(exc)), exc.code)

    @app.exception_handler(ServeError)
    async def on_serve_error(request: Request, exc: ServeError) -> Response:
        return _respond(request, problem(exc.status, exc.code, exc.detail, headers=exc.headers), exc.code)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> Response:
        # Field locations and messages only: the offending input is never echoed (it may be a token).
        where = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in exc.errors()[:5])
        answer = problem(422, "invalid_request", sanitize_provider_text(f"invalid request: {where}", limit=400))
        return _respond(request, answer, "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        detail = "no such route" if exc.status_code == 404 else sanitize_provider_text(exc.detail, limit=200)
        return _respond(request, problem(exc.status_code, code, detail, headers=dict(exc.headers or {})), code)

    app.add_middleware(Recorder, broker=broker, log=log)  # it records the refusals of BodyLimit too
    # Outermost: its security headers go on every /ui/ answer, the Recorder's too.
    console.install(app, broker, hot_window=hot_window)
    return app
