"""The loopback redirect listener of RFC 8252 §7.3: 127.0.0.1, an ephemeral port, one redirect accepted.

The listener answers requests to other paths (a browser's /favicon.ico) with 404 and keeps waiting; the first
request to ``/callback`` is the answer, whatever it holds: its query is handed to the caller, which decides,
and the browser gets a short page saying whether to close the tab. The query holds the authorization code,
so nothing about a request is logged.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

from grantkeeper._exceptions import ConsentTimeout, GrantkeeperError

__all__ = ["CALLBACK_PATH", "LoopbackListener"]

CALLBACK_PATH = "/callback"

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>grantkeeper</title></head>
<body style="font-family: sans-serif; margin: 3em"><h1>{title}</h1><p>{text}</p></body></html>
"""

Query = dict[str, list[str]]


class _Server(HTTPServer):
    query: Query | None = None
    outcome: GrantkeeperError | None = None
    decide: Callable[[Query], None]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "grantkeeper"
    sys_version = ""
    timeout = 10  # a connection that sends nothing (a browser's preconnect) must not hold the listener

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != CALLBACK_PATH or self.server.query is not None:
            self._answer(404, "Not found", "This is grantkeeper's one-time redirect listener.")
            return
        query = parse_qs(parts.query, keep_blank_values=True)
        self.server.query = query
        try:
            self.server.decide(query)
        except GrantkeeperError as exc:
            self.server.outcome = exc
            self._answer(400, "Authorization failed", f"{exc.message}. You can close this tab.")
            return
        self._answer(200, "Authorization received", "You can close this tab and return to the terminal.")

    def _answer(self, status: int, title: str, text: str) -> None:
        body = _PAGE.format(title=html.escape(title), text=html.escape(text)).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the request line holds the authorization code


class LoopbackListener:
    """Bound on creation (so the redirect URI is known before the browser opens); closed on exit."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._server = _Server((host, 0), _Handler)

    @property
    def redirect_uri(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{CALLBACK_PATH}"

    def wait(self, decide: Callable[[Query], None], *, timeout: float) -> Query:
        """Serve until the first request to the callback path, and return its query.

        `decide` runs on that query before the browser is answered: whatever `GrantkeeperError` it raises is
        shown on the page and raised here. No redirect within `timeout` seconds raises `ConsentTimeout`.
        """
        self._server.decide = decide
        deadline = time.monotonic() + timeout
        while self._server.query is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConsentTimeout(
                    f"no redirect reached {self.redirect_uri} within {timeout:g} seconds; run 'grantkeeper connect' "
                    "again (--timeout waits longer)"
                )
            self._server.timeout = min(left, 0.5)
            self._server.handle_request()
        if self._server.outcome is not None:
            raise self._server.outcome
        return self._server.query

    def close(self) -> None:
        self._server.server_close()

    def __enter__(self) -> LoopbackListener:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
