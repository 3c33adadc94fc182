"""Structured JSON logs (structlog), every line passed through grantkeeper's redaction.

One JSON object per line on stderr: the broker's own events (one ``request`` line per answered request, startup,
shutdown), the ``grantkeeper`` library logger and uvicorn's, all redacted (`RedactingFilter` on the stdlib handler,
`_redact` in structlog's chain) and rendered by `JSONRenderer`. Request lines carry the method, the path, the route
template, the status, the API key's name and the time taken; never a header, a query string or a body.
"""

from __future__ import annotations

import datetime
import logging
import re
import sys
from json.encoder import encode_basestring_ascii as _quoted  # json.dumps's own string encoder
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict

from grantkeeper._secrets import MIN_REDACTED_LENGTH, live_values_in
from grantkeeper.redact import RedactingFilter
from grantkeeper.redact._core import REDACTED, is_sensitive_key, scrub

__all__ = ["LEVELS", "RequestLog", "configure_logging", "get_logger"]

LEVELS = ("debug", "info", "warning", "error")
_LOGGERS = ("grantkeeper", "uvicorn", "uvicorn.error")


_INERT = re.compile(r"[A-Za-z0-9_./{}@-]*")


class _Sink:
    """Where `configure_logging` sends the broker's lines, and whether INFO lines are written (for `RequestLog`)."""

    printer: structlog.PrintLogger | None = None
    info = True


def _chain() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]


def _scrubbed(value: Any) -> Any:
    """`scrub(value)`, skipping what it would return unchanged: a string of `_INERT` characters only (every rule
    of the redaction needs a quote, ``:``, ``=``, ``,`` or a space to match) holding no live secret. The request
    line's values (method, path, route, key name) are such strings, and scrubbing each in full cost more than the
    rest of the line."""
    if isinstance(value, str) and _INERT.fullmatch(value) and (len(value) < MIN_REDACTED_LENGTH
                                                              or not live_values_in(value)):  # fmt: skip
        return value
    return scrub(value)


def _redact(_logger: Any, _method_name: str, event_dict: EventDict) -> EventDict:
    """`RedactingProcessor`'s result, cheaper (`_scrubbed`). It runs before the level and the time stamp are
    added: both are this module's own text, and the stamp's colons would send it through every rule."""
    return {k: REDACTED if is_sensitive_key(k) else _scrubbed(v) for k, v in event_dict.items()}


def _rendered_exception(_logger: Any, _method_name: str, event_dict: EventDict) -> EventDict:
    """The traceback `RedactingFilter` rendered (and scrubbed) into the record, as the line's ``exception``: the
    filter leaves no `exc_info` for `format_exc_info`, and the formatter clears the record's text after this chain."""
    text = event_dict["_record"].exc_text
    if text:
        event_dict["exception"] = text
    return event_dict


#: What `RedactingFilter` on the same handler already scrubbed (the message, formatted there), this module's own
#: text, and ProcessorFormatter's bookkeeping (removed before rendering).
_DONE_BY_FILTER = frozenset({"event", "level", "timestamp", "_record", "_from_structlog"})


def _redact_record(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    """The stdlib handler's redaction, after `RedactingFilter`: a stdlib record's message was scrubbed by the filter
    (scrubbing it again cost as much as the filter itself), so only the rest is scrubbed here (the logger's name,
    bound context variables). Anything else gets `_redact` whole."""
    if event_dict.get("_from_structlog") is not False:
        return _redact(logger, method_name, event_dict)
    for key, value in event_dict.items():  # in place: ProcessorFormatter made this dict for this record
        if key not in _DONE_BY_FILTER:
            event_dict[key] = REDACTED if is_sensitive_key(key) else _scrubbed(value)
    return event_dict


def configure_logging(level: str = "info", *, stream: TextIO | None = None) -> None:
    """Send the broker's, grantkeeper's and uvicorn's logs to `stream` (stderr) as redacted JSON lines."""
    out = stream or sys.stderr
    numeric = getattr(logging, level.upper())
    _Sink.printer, _Sink.info = structlog.PrintLogger(out), numeric <= logging.INFO
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.format_exc_info,
            _redact,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),  # its loggers share `_Sink.printer`'s lock on `out`
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactingFilter(extras=False))  # the formatter below writes no `extra=` field
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *_chain(), _rendered_exception],
        processors=[_redact_record, structlog.stdlib.ProcessorFormatter.remove_processors_meta,
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


class RequestLog:
    """The ``request`` line written for every answered request: the line ``get_logger().info("request", ...)``
    writes, through the same redaction (`_scrubbed`) to the same stream and lock, without structlog's per-call
    chain (binding, the processor loop, the renderer's generic encoder), which cost more than the token route's
    own work. Keys, order and format are the structlog line's. Without `configure_logging` (an application
    embedded by hand) it is that structlog call."""

    def __init__(self) -> None:
        self._printer, self._info = _Sink.printer, _Sink.info
        self._fallback = get_logger()

    def write(self, *, method: str, path: str, route: str, status: int, api_key: str | None, outcome: str | None,
              ms: float) -> None:  # fmt: skip
        """`route` and `outcome` are the broker's own text (a route template, an error code); the method, the
        path and the key name are scrubbed like every other value."""
        if self._printer is None:
            self._fallback.info("request", method=method, path=path, route=route, status=status, api_key=api_key,
                                outcome=outcome, ms=ms)  # fmt: skip
            return
        if not self._info:
            return
        stamp = datetime.datetime.now(tz=datetime.UTC).isoformat().replace("+00:00", "Z")
        # The bytes ``json.dumps`` gives for this dict (its separators, its string and number encodings: strings
        # through the same C encoder, numbers by their repr), put together without its generic encoder.
        key = "null" if api_key is None else _quoted(_scrubbed(api_key))
        self._printer.msg(
            f'{{"method": {_quoted(_scrubbed(method))}, "path": {_quoted(_scrubbed(path))}, "route": '
            f'{_quoted(route)}, "status": {int(status)!r}, "api_key": {key}, "outcome": '
            f'{"null" if outcome is None else _quoted(outcome)}, "ms": {float(ms)!r}, "event": "request", '
            f'"level": "info", "timestamp": {_quoted(stamp)}}}'
        )
