"""Structured JSON logs (structlog), every line passed through grantkeeper's redaction.

One JSON object per line on stderr: the broker's own events (one ``request`` line per answered request, startup,
shutdown), the ``grantkeeper`` library logger and uvicorn's, all rendered by the same chain ending in
`RedactingProcessor` then `JSONRenderer`. Request lines carry the method, the path, the route template, the
status, the API key's name and the time taken; never a header, a query string or a body.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from grantkeeper.redact import RedactingFilter
from grantkeeper.redact.structlog import RedactingProcessor

__all__ = ["LEVELS", "configure_logging", "get_logger"]

LEVELS = ("debug", "info", "warning", "error")
_LOGGERS = ("grantkeeper", "uvicorn", "uvicorn.error")


def _chain() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]


def configure_logging(level: str = "info", *, stream: TextIO | None = None) -> None:
    """Send the broker's, grantkeeper's and uvicorn's logs to `stream` (stderr) as redacted JSON lines."""
    out = stream or sys.stderr
    numeric = getattr(logging, level.upper())
    structlog.configure(
        processors=[*_chain(), RedactingProcessor(), structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *_chain()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, RedactingProcessor(),
                    structlog.processors.JSONRenderer()],
    ))  # fmt: skip
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(numeric)
        logger.propagate = False
    logging.getLogger("uvicorn.access").disabled = True  # the broker logs each request itself


def get_logger() -> Any:
    return structlog.get_logger("grantkeeper.serve")
