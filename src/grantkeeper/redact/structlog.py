"""Redaction for structlog: a processor with the rules of `grantkeeper.redact.scrub`.

Place it after ``format_exc_info`` (so the rendered exception is a string it can scrub) and before the
renderer::

    import structlog
    from grantkeeper.redact.structlog import RedactingProcessor

    structlog.configure(processors=[
        structlog.processors.add_log_level,
        structlog.processors.format_exc_info,
        RedactingProcessor(),
        structlog.processors.JSONRenderer(),
    ])
"""

from __future__ import annotations

from grantkeeper.redact._core import scrub
from grantkeeper.redact._optional import missing_extra

try:
    from structlog.typing import EventDict, WrappedLogger
except ImportError as exc:
    raise missing_extra("grantkeeper.redact.structlog", "structlog", "structlog") from exc

__all__ = ["RedactingProcessor"]


class RedactingProcessor:
    """Returns a scrubbed copy of the event dict: sensitive keys at any depth, secrets inside any string."""

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        cleaned: EventDict = scrub(dict(event_dict))
        return cleaned
