"""`TokenFastPath`: ``GET /v1/grants/{name}/token`` without a query string, answered before FastAPI's routing.

The token route is the broker's hot path, and FastAPI's per-request work for it (matching every route, solving
the dependencies, validating the parameters) cost more than everything the broker does. This middleware runs the
route's own code (`routes_grants.admit` then `routes_grants.token_body`) and the application's own exception
handlers, so the answer, its status, the request state the recorder logs and audits, and every refusal are the
route's. A token is answered with the bytes and headers `JSONResponse` would send, written as ASGI messages
directly (no `Request` or `Response` objects on the hot path). Anything else (another route or method, a query
string such as ``min_valid``, a name FastAPI would answer 422) goes to FastAPI untouched, before anything was
checked or counted.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.routing import Match

from grantkeeper.serve.broker import Broker
from grantkeeper.serve.routes_grants import TOKEN_HEADERS, admit, get_token, render_json, router, token_body

__all__ = ["TokenFastPath"]

_MAX_NAME = 200  # routes_grants.GrantName's bounds
_Handler = Any


class TokenFastPath:
    def __init__(self, app: Any, owner: FastAPI, broker: Broker) -> None:
        self.app, self.owner, self.broker = app, owner, broker
        self._route: APIRoute | None = None

    def _token_route(self) -> APIRoute:
        if self._route is None:
            # The router's own route: create_app includes that router without a prefix of its own.
            found = [r for r in router.routes if isinstance(r, APIRoute) and r.endpoint is get_token]
            if len(found) != 1:
                raise RuntimeError("the token route is not mounted exactly once")
            self._route = found[0]
        return self._route

    def _handler(self, exc: Exception) -> _Handler | None:
        """The handler Starlette's ExceptionMiddleware would pick (500 and `Exception` are not its to handle)."""
        handlers = self.owner.exception_handlers
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            if cls in handlers:
                return handlers[cls]
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope.get("query_string"):
            await self.app(scope, receive, send)
            return
        route = self._token_route()
        match, child = route.matches(scope)
        name = child.get("path_params", {}).get("name", "") if match is Match.FULL else ""
        if not 1 <= len(name) <= _MAX_NAME:
            await self.app(scope, receive, send)
            return
        scope.update(child)
        scope["route"] = route
        try:
            await admit(scope, self.broker, name, "token", "token")
            body = render_json(await token_body(scope, self.broker, name, None)).encode()
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            response = await handler(Request(scope, receive), exc)
            await response(scope, receive, send)
            return
        headers = [*TOKEN_HEADERS, (b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
