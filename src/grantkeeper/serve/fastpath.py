"""`FastPaths`: the token route and the proxy route, answered before FastAPI's routing.

These are the broker's hot paths, and FastAPI's per-request work for them (matching every route in turn, solving
the dependencies, validating the parameters) cost more than everything the broker does for a cached token, and
about a third of a proxied GET's own CPU. This middleware runs each route's own code after the check its
dependency makes (`routes_grants.admit`), and answers an exception with the application's own exception handlers
as Starlette's exception middleware would (`_answering_errors`), so the answer, its status, the request state the
recorder logs and audits, and every refusal are the route's:

- ``GET /v1/grants/{name}/token`` without a query string: `routes_grants.token_body`, answered with the bytes
  and headers `JSONResponse` would send, written as ASGI messages directly (no `Request` or `Response` objects).
- ``/v1/proxy/{name}/{path}``, every method the route takes: `routes_proxy.forward`.

Anything else (another route or method, a token request with a query string such as ``min_valid``, a name
FastAPI would answer 422) goes to FastAPI untouched, before anything was checked or counted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.routing import Match
from starlette.types import Message, Receive, Scope, Send

from grantkeeper.serve import routes_proxy
from grantkeeper.serve.broker import Broker
from grantkeeper.serve.routes_grants import TOKEN_HEADERS, admit, get_token, render_json, router, token_body

__all__ = ["FastPaths"]

_MAX_NAME = 200  # routes_grants.GrantName's bounds
_Handler = Any
_App = Callable[[Scope, Receive, Send], Awaitable[None]]


def _route_of(routes: list[Any], endpoint: Any) -> APIRoute:
    # The router's own route: create_app includes each router without a prefix of its own.
    found = [r for r in routes if isinstance(r, APIRoute) and r.endpoint is endpoint]
    if len(found) != 1:
        raise RuntimeError(f"the route of {endpoint.__name__} is not mounted exactly once")
    return found[0]


class FastPaths:
    def __init__(self, app: Any, owner: FastAPI, broker: Broker) -> None:
        self.app, self.owner, self.broker = app, owner, broker
        self._token = _route_of(router.routes, get_token)
        self._proxy = _route_of(routes_proxy.router.routes, routes_proxy.proxy)

    def _handler(self, exc: Exception) -> _Handler | None:
        """The handler Starlette's ExceptionMiddleware would pick (500 and `Exception` are not its to handle)."""
        handlers = self.owner.exception_handlers
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            if cls in handlers:
                return handlers[cls]
        return None

    def _matched(self, route: APIRoute, scope: Scope) -> str | None:
        """The grant name if `route` takes `scope` as FastAPI would (its path params then set in `scope`)."""
        match, child = route.matches(scope)
        if match is not Match.FULL:
            return None
        name = child["path_params"].get("name", "")
        if not 1 <= len(name) <= _MAX_NAME:
            return None  # FastAPI answers it 422
        scope.update(child)
        scope["route"] = route
        return str(name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(routes_proxy.PREFIX):
                name = self._matched(self._proxy, scope)
                if name is not None:
                    await self._answering_errors(self._proxied(name), scope, receive, send)
                    return
            elif scope["method"] == "GET" and not scope.get("query_string"):
                name = self._matched(self._token, scope)
                if name is not None:
                    await self._answering_errors(self._token_answer(name), scope, receive, send)
                    return
        await self.app(scope, receive, send)

    def _token_answer(self, name: str) -> _App:
        async def answer(scope: Scope, _receive: Receive, send: Send) -> None:
            await admit(scope, self.broker, name, "token", "token")
            body = render_json(await token_body(scope, self.broker, name, None)).encode()
            headers = [*TOKEN_HEADERS, (b"content-length", str(len(body)).encode()),
                       (b"content-type", b"application/json")]  # fmt: skip
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        return answer

    def _proxied(self, name: str) -> _App:
        async def answer(scope: Scope, receive: Receive, send: Send) -> None:
            await admit(scope, self.broker, name, "proxy", "proxy")
            request = Request(scope, receive, send)
            response = await routes_proxy.forward(request, name, scope["path_params"]["path"])
            await response(scope, receive, send)

        return answer

    async def _answering_errors(self, app: _App, scope: Scope, receive: Receive, send: Send) -> None:
        """`app`, its exceptions answered by the application's handlers as Starlette's exception middleware does:
        an exception without a handler goes on up (the recorder answers it 500), and one raised after the answer
        started cannot be answered any more (the connection is then aborted, as through FastAPI)."""
        started = False

        async def sender(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, receive, sender)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            if started:
                raise RuntimeError("Caught handled exception, but response already started.") from exc
            response = await handler(Request(scope, receive), exc)
            await response(scope, receive, sender)
