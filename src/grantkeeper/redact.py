"""The second line of defence for I6: scrub secrets from log records and event dicts.

The first line is `Secret`: grantkeeper never puts a token into a log call. This module is for what other
code logs near it (an application's own request logging, httpx debug output, a framework's exception
handler): `scrub` removes values under sensitive keys and credentials inside Authorization-style strings.

    import logging
    from grantkeeper.redact import RedactingFilter
    handler.addFilter(RedactingFilter())          # stdlib logging: add to every handler

    structlog.configure(processors=[..., structlog.processors.format_exc_info,
                                    grantkeeper.redact.structlog_processor,   # before the renderer
                                    structlog.processors.JSONRenderer()])
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, MutableMapping
from typing import Any

from grantkeeper._secrets import Secret

__all__ = ["REDACTED", "SENSITIVE_KEYS", "RedactingFilter", "scrub", "structlog_processor"]

REDACTED = "[redacted]"
SENSITIVE_KEYS = frozenset(
    {"access_token", "refresh_token", "id_token", "client_secret", "code", "authorization", "password",
     "assertion", "client_assertion", "code_verifier", "token", "proxy-authorization", "cookie", "set-cookie"}
)  # fmt: skip

# "Bearer abc", "Basic abc", and form/JSON/query fragments like refresh_token=abc or "access_token": "abc".
_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic|dpop)\s+[A-Za-z0-9\-._~+/=]+")
_FIELD = re.compile(
    r"(?i)([\"']?(?:access_token|refresh_token|id_token|client_secret|code|assertion|password)[\"']?\s*[=:]\s*[\"']?)"
    r"[^\"'&\s,}]+"
)


def _scrub_text(text: str) -> str:
    return _FIELD.sub(lambda m: m.group(1) + REDACTED, _CREDENTIAL.sub(lambda m: m.group(1) + " " + REDACTED, text))


def scrub(value: Any) -> Any:
    """A copy of `value` with secrets removed. Never mutates its argument."""
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, str):
        return _scrub_text(value)
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and k.lower() in SENSITIVE_KEYS else scrub(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return type(value)(scrub(v) for v in value)
    return value


class RedactingFilter(logging.Filter):
    """A `logging.Filter` that scrubs the message, its arguments and the exception text of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
        record.args = None
        if record.exc_info:
            # Render the traceback now, scrubbed, so no formatter renders the raw one later.
            formatter = logging.Formatter()
            record.exc_text = _scrub_text(formatter.formatException(record.exc_info))
            record.exc_info = None
        if record.exc_text:
            record.exc_text = _scrub_text(record.exc_text)
        return True


def structlog_processor(_logger: object, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor (no structlog import needed): place after format_exc_info, before the renderer."""
    return scrub(dict(event_dict))
