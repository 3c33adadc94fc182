"""Redaction for stdlib `logging`: a Filter for handlers.

Add it to every *handler* (a filter on a logger does not see records propagated from child loggers such as
``httpx`` or ``httpcore``)::

    from grantkeeper.redact import RedactingFilter
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
"""

from __future__ import annotations

import logging

from grantkeeper.redact._core import REDACTED, is_sensitive_key, scrub, scrub_text

__all__ = ["RedactingFilter"]

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class RedactingFilter(logging.Filter):
    """Scrubs a record's message and arguments, its `extra` fields, its exception and stack text.

    The message is formatted here (so %-arguments are scrubbed after interpolation) and the traceback is
    rendered here, scrubbed, so no formatter can render the raw one later.

    ``extras=False`` leaves the `extra` fields as they are: for a handler whose formatter never writes them
    (serve's JSON lines carry the message only), where scrubbing them was most of the filter's cost.
    """

    def __init__(self, name: str = "", *, extras: bool = True) -> None:
        super().__init__(name)
        self.extras = extras

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # arguments that do not fit the format: keep both, scrubbed
            message = f"{record.msg} {record.args!r}"
        record.msg = scrub_text(message)
        record.args = None
        for name in set(vars(record)) - _STANDARD if self.extras else ():
            value = getattr(record, name)
            setattr(record, name, REDACTED if is_sensitive_key(name) else scrub(value))
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = scrub_text(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub_text(record.stack_info)
        return True
