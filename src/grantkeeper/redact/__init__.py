"""The second line of defence for I6: scrub secrets from what other code logs, traces and reports.

The first line is `Secret`: grantkeeper never puts a token into a log call. This package is for what other
code emits near it (an application's own request logging, httpx debug output, a framework's exception
handler, a tracing or error-reporting SDK). Every helper applies the same rules (`scrub`): by field name in
form, JSON, repr and header syntax, and by value for every live token the keeper holds.

=============================================  ===================================================  =========
helper                                         where it goes                                        extra
=============================================  ===================================================  =========
`RedactingFilter`                              ``handler.addFilter(...)`` on stdlib logging handlers  -
`structlog_processor`                          structlog processor chain, before the renderer      -
`grantkeeper.redact.structlog`                 the same as a typed structlog processor class       structlog
`grantkeeper.redact.httpx`                     httpx ``event_hooks`` / a logging transport wrapper   -
`grantkeeper.redact.tracebacks`                tracebacks rendered with local variables             -
`grantkeeper.redact.otel`                      OpenTelemetry span processor wrapper                 otel
`grantkeeper.redact.sentry`                    Sentry ``before_send`` / ``before_breadcrumb``       sentry
=============================================  ===================================================  =========

A helper whose library is absent raises `MissingExtra` (an ImportError) naming the extra to install.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from grantkeeper.redact._core import REDACTED, SENSITIVE_KEYS, scrub, scrub_text
from grantkeeper.redact._optional import MissingExtra
from grantkeeper.redact.stdlib import RedactingFilter

__all__ = [
    "REDACTED",
    "SENSITIVE_KEYS",
    "MissingExtra",
    "RedactingFilter",
    "scrub",
    "scrub_text",
    "structlog_processor",
]


def structlog_processor(_logger: object, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor (no structlog import needed): place after format_exc_info, before the renderer."""
    return scrub(dict(event_dict))
