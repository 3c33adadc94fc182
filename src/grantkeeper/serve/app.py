"""`create_app`: the FastAPI application over a `Broker`, with the one error boundary and the request log.

The error boundary: every exception a route raises becomes an RFC 9457 problem here (`grantkeeper.serve.errors`
has the status table); nothing else in the package writes an error response. The request middleware writes one
redacted JSON log line per request, counts it in the metrics and adds the audit entry for token, refresh,
rejected and proxy requests (refused ones included).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from grantkeeper import __version__
from grantkeeper._exceptions import GrantkeeperError, sanitize_provider_text
from grantkeeper.redact.tracebacks import format_exception
from grantkeeper.serve import routes_grants, routes_health, routes_proxy
from grantkeeper.serve.bodylimit import BodyLimit
from grantkeeper.serve.broker import Broker
from grantkeeper.serve.errors import ServeError, conceal, problem, problem_for
from grantkeeper.serve.logs import get_logger
from grantkeeper.serve.proxy import ProxyLimits

__all__ = ["DEFAULT_MAX_BODY", "create_app"]

DEFAULT_MAX_BODY = 1 << 20

_DESCRIPTION = """An HTTP token broker over grantkeeper's keeper: callers with an API key (or on the Unix socket)
get access tokens of the grants their key reaches. No route ever returns a refresh token. Errors are RFC 9457
problem documents carrying grantkeeper's error code and the doctor's class (docs/serve.md)."""


def _respond(request: Request, answer: tuple[int, bytes, dict[str, str]], code: str) -> Response:
    status, body, headers = answer
    request.state.outcome = code
    return Response(body, status_code=status, headers=headers)


def _shown(text: str, response: Response) -> str:
    """A name a request was served for is a real grant's; in a refusal or error it may be anything a client sent.
    Paths are concealed segment by segment, so the route stays readable."""
    return text if response.status_code < 400 else "/".join(conceal(part) for part in text.split("/"))


def create_app(broker: Broker, *, max_body: int = DEFAULT_MAX_BODY, proxy_limits: ProxyLimits | None = None) -> FastAPI:
    """The application. `max_body` caps API request bodies; proxied bodies stream under `proxy_limits` instead.
    Close ``app.state.proxy_clients`` when done serving."""
    app = FastAPI(title="grantkeeper serve", version=__version__, description=_DESCRIPTION, docs_url=None,
                  redoc_url=None)  # fmt: skip
    app.state.broker = broker
    app.state.proxy_limits = proxy_limits or ProxyLimits()
    app.state.proxy_clients = routes_proxy.ProxyClients()
    app.add_middleware(BodyLimit, limit=max_body, streamed_prefix=routes_proxy.PREFIX)
    app.include_router(routes_grants.router)
    app.include_router(routes_proxy.router)
    app.include_router(routes_health.router)
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

    @app.middleware("http")
    async def record(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        try:
            response: Response = await call_next(request)
        except Exception as exc:  # a bug: answered here, so the connection stays usable and the process serves on
            log.error("unexpected error", error=type(exc).__name__, path=conceal(request.url.path),
                      traceback=format_exception(exc))  # fmt: skip
            answer = problem(
                500, "internal", f"unexpected {type(exc).__name__}: a bug in grantkeeper serve; see its log"
            )
            response = _respond(request, answer, "internal")
        elapsed = time.perf_counter() - started
        state = request.state
        route = getattr(request.scope.get("route"), "path", "unmatched")
        caller = getattr(state, "caller", None)
        broker.metrics.requests.labels(caller or "-", route, str(response.status_code)).inc()
        broker.metrics.request_seconds.labels(route).observe(elapsed)
        action = getattr(state, "action", None)
        outcome = getattr(state, "outcome", None)
        grant = getattr(state, "grant", None)
        if action == "token":
            broker.metrics.token_requests.labels(outcome or "served").inc()
        if action is not None:
            shown = None if grant is None else _shown(grant, response)
            broker.audit.add(caller or "-", action, shown, response.status_code,
                             fingerprint=getattr(state, "fingerprint", None),
                             generation=getattr(state, "generation", None),
                             detail=getattr(state, "detail", None) or outcome)  # fmt: skip
        log.info("request", method=request.method, path=_shown(request.url.path, response), route=route,
                 status=response.status_code, api_key=caller, outcome=outcome, ms=round(elapsed * 1000, 1))  # fmt: skip
        return response

    return app
