"""A cap on request bodies, applied before anything reads them: FastAPI parses a body before the route's
dependencies run, so before the caller is authenticated. A declared Content-Length over the cap is refused at once;
otherwise the body (at most the cap) is read here and handed on, and a chunked body that outgrows the cap is
refused as soon as it does. Both answer 413 ``body_too_large``."""

from __future__ import annotations

from typing import Any

from grantkeeper.serve.errors import problem

__all__ = ["BodyLimit"]


class BodyLimit:
    """ASGI middleware: bodies of at most `limit` bytes, except under `streamed_prefix` (the proxy, which streams
    bodies through under its own cap and must not hold them whole)."""

    def __init__(self, app: Any, limit: int, streamed_prefix: str | None = None) -> None:
        self.app, self.limit, self.streamed_prefix = app, limit, streamed_prefix

    async def _refuse(self, send: Any) -> None:
        status, body, headers = problem(413, "body_too_large",
                                        f"the request body is over {self.limit} bytes ([limits] max_body)")  # fmt: skip
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        streamed = self.streamed_prefix is not None and str(scope.get("path", "")).startswith(self.streamed_prefix)
        if scope["type"] != "http" or streamed:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        buffered: list[dict[str, Any]] = []
        size = 0
        while True:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break  # the client went away: let the application see it
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Any:
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)
