"""`ConsoleHeaders`: the security headers of every answer under ``/ui/`` (pages, the stylesheet, refusals, 404s).

Plain ASGI, outermost of the console's concerns, so no answer under the prefix leaves without them, whoever
wrote it (a route, the error boundary, a redirect). The console ships no script: ``script-src 'none'``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CONSOLE_HEADERS", "PREFIX", "ConsoleHeaders"]

PREFIX = "/ui"
_CSP = (
    "default-src 'none'; script-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
CONSOLE_HEADERS: dict[str, str] = {
    "content-security-policy": _CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
_RAW = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in CONSOLE_HEADERS.items()]
_NAMES = {k for k, _ in _RAW}


class ConsoleHeaders:
    """ASGI middleware: `CONSOLE_HEADERS` on every HTTP answer whose path is ``/ui`` or under ``/ui/``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _NAMES]
                message = {**message, "headers": kept + _RAW}
            await send(message)

        await self.app(scope, receive, send_with_headers)
