"""Redaction for rendered tracebacks, including frameworks that show local variables.

A traceback without locals shows code and exception messages; with locals (``rich.traceback``,
``traceback.TracebackException(capture_locals=True)``, debug pages) it shows every variable of every frame,
and a frame that just revealed a token for the wire holds it in plain text. Use::

    from grantkeeper.redact.tracebacks import format_exception, install_excepthook, scrub_locals

    text = format_exception(exc, with_locals=True)   # rendered, then scrubbed
    install_excepthook()                             # uncaught exceptions print scrubbed tracebacks
    safe = scrub_locals(frame.f_locals)              # for a framework hook that renders locals itself
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Mapping
from types import TracebackType

from grantkeeper.redact._core import REDACTED, is_sensitive_key, scrub_text

__all__ = ["format_exception", "install_excepthook", "scrub_locals"]


def scrub_locals(frame_locals: Mapping[str, object]) -> dict[str, str]:
    """Each local's repr, scrubbed; a local with a sensitive name (``refresh_token``, ``code``...) is replaced."""
    safe: dict[str, str] = {}
    for name, value in frame_locals.items():
        if is_sensitive_key(name):
            safe[name] = REDACTED
            continue
        try:
            text = repr(value)
        except Exception as exc:  # a broken __repr__ must not break error reporting
            text = f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
        safe[name] = scrub_text(text)
    return safe


def format_exception(exc: BaseException, *, with_locals: bool = False) -> str:
    """The traceback of `exc` (chained causes included) as text, with every secret removed."""
    rendered = traceback.TracebackException.from_exception(exc, capture_locals=with_locals)
    for part in _chain(rendered):
        for frame in part.stack:
            if frame.locals is not None:
                frame.locals = {name: REDACTED if is_sensitive_key(name) else scrub_text(value)
                                for name, value in frame.locals.items()}  # fmt: skip
    return scrub_text("".join(rendered.format()))


def _chain(rendered: traceback.TracebackException) -> list[traceback.TracebackException]:
    seen: list[traceback.TracebackException] = []
    todo = [rendered]
    while todo:
        current = todo.pop()
        if any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [c for c in (current.__cause__, current.__context__) if c is not None]
        todo += list(current.exceptions or ())
    return seen


def install_excepthook(*, with_locals: bool = False) -> None:
    """Make uncaught exceptions print scrubbed tracebacks to stderr."""

    def hook(_kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        sys.stderr.write(format_exception(exc.with_traceback(tb), with_locals=with_locals))

    sys.excepthook = hook
