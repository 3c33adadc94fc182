"""The operator console of `grantkeeper serve`, at ``/ui/``: server-rendered pages (Jinja2, plain CSS, no script).

`install` adds it to an application: the routes (`routes`), the security headers of every ``/ui/`` answer
(`headers`), and the answer of a `routes.ConsoleRefusal` (a redirect to sign in, a refusal page). Sessions are
in `sessions`, the store reads in `queries`, the charts in `charts`, the templates' helpers in `pages`.
docs/console.md is the reference.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.responses import Response

from grantkeeper.serve.broker import Broker
from grantkeeper.serve.console.headers import ConsoleHeaders
from grantkeeper.serve.console.routes import Console, ConsoleRefusal, router

__all__ = ["install"]


def install(app: FastAPI, broker: Broker, *, hot_window: float | None = None) -> None:
    """Serve the console under ``/ui/`` in `app`; `hot_window`: the scheduler's (its default if None)."""
    app.state.console = Console(broker) if hot_window is None else Console(broker, hot_window=hot_window)
    app.include_router(router)

    async def refused(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ConsoleRefusal)
        return exc.response

    app.add_exception_handler(ConsoleRefusal, refused)
    app.add_middleware(ConsoleHeaders)
