"""`Recorder`: the request middleware, as plain ASGI.

Per request it captures the status from the ``http.response.start`` message, then counts the request in the
metrics, adds the audit entry for token, refresh, rejected and proxy requests (refused ones included) and writes
one redacted JSON log line. An exception nothing else handled (a bug) is logged with its traceback and answered
500 here when no answer has started, so the connection stays usable and the process serves on.

Plain ASGI rather than ``@app.middleware("http")`` (Starlette's ``BaseHTTPMiddleware``): that one runs the app
in a task and streams every answer through a memory channel, which costs more than the token route itself. Routes
leave what the record needs on ``request.state``, which Starlette keeps in ``scope["state"]``.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request

from grantkeeper.redact.tracebacks import format_exception
from grantkeeper.serve.broker import Broker
from grantkeeper.serve.errors import conceal, problem
from grantkeeper.serve.logs import RequestLog

__all__ = ["Recorder", "request_path", "shown"]


def shown(text: str, status: int) -> str:
    """A name a request was served for is a real grant's; in a refusal or error it may be anything a client sent.
    Paths are concealed segment by segment, so the route stays readable."""
    return text if status < 400 else "/".join(conceal(part) for part in text.split("/"))


def request_path(scope: dict[str, Any]) -> str:
    """``request.url.path``, without building the URL for the ordinary path that needs no escaping."""
    path = str(scope["path"])
    if "?" in path or "#" in path or "\\" in path or path.startswith("//"):
        return Request(scope).url.path
    return path


class Recorder:
    """ASGI middleware: metrics, audit and the log line of every HTTP request (see the module docstring)."""

    def __init__(self, app: Any, broker: Broker, log: Any) -> None:
        self.app, self.broker, self.log = app, broker, log
        self._line = RequestLog()
        # The metrics' labelled children, looked up once: `labels()` validates and locks on every call. As many
        # as the metrics themselves keep (one per label set seen).
        self._children: dict[tuple[object, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)  # the metrics live as long as the broker
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state: dict[str, Any] = scope.setdefault("state", {})
        status = 0

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception as exc:  # a bug: answered here, so the connection stays usable and the process serves on
            self.log.error("unexpected error", error=type(exc).__name__, path=conceal(request_path(scope)),
                           traceback=format_exception(exc))  # fmt: skip
            if status:
                raise  # an answer is under way: nothing to do but let the server end the connection
            status, body, headers = problem(
                500, "internal", f"unexpected {type(exc).__name__}: a bug in grantkeeper serve; see its log"
            )
            state["outcome"] = "internal"
            await send({"type": "http.response.start", "status": status,
                        "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})
        self._record(scope, state, status, time.perf_counter() - started)

    def _record(self, scope: dict[str, Any], state: dict[str, Any], status: int, elapsed: float) -> None:
        metrics = self.broker.metrics
        route = getattr(scope.get("route"), "path", "unmatched")
        caller = state.get("caller")
        self._child(metrics.requests, caller or "-", route, str(status)).inc()
        self._child(metrics.request_seconds, route).observe(elapsed)
        action = state.get("action")
        outcome = state.get("outcome")
        grant = state.get("grant")
        if action == "token":
            self._child(metrics.token_requests, outcome or "served").inc()
        if action is not None:
            self.broker.audit.add(caller or "-", action, None if grant is None else shown(grant, status), status,
                                  fingerprint=state.get("fingerprint"), generation=state.get("generation"),
                                  detail=state.get("detail") or outcome)  # fmt: skip
        self._line.write(method=scope["method"], path=shown(request_path(scope), status), route=route, status=status,
                         api_key=caller, outcome=outcome, ms=round(elapsed * 1000, 1))  # fmt: skip
