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

import re
import sys
import traceback
from collections.abc import Mapping
from types import TracebackType

from grantkeeper.redact._core import REDACTED, is_sensitive_key, scrub_text

__all__ = ["format_exception", "install_excepthook", "scrub_locals"]

# Variable names are code, not data: any name that mentions one of these (``tokens``, ``new_refresh_token``,
# ``client_secret_value``) is hidden outright, a wider net than the exact field names used for mappings.
# Key material is held as plain bytes/text while it is parsed (`keys`, `raw`, `material`, a passphrase, a PKCE
# verifier, the client id:secret `pair`): hidden by name, since it is not a registered Secret yet.
_SENSITIVE_NAME = re.compile(
    r"(?i)token|secret|passw|assertion|authori[sz]ation|cookie|credential|bearer|key|ring|raw|material|verifier|"
    r"^pair$|^text$|^code$"
)


def _hidden(name: str) -> bool:
    return is_sensitive_key(name) or _SENSITIVE_NAME.search(name) is not None


def scrub_locals(frame_locals: Mapping[str, object]) -> dict[str, str]:
    """Each local's repr, scrubbed; a local whose name mentions a token, secret, password, assertion,
    authorization, cookie or credential (or is ``code``) is replaced outright."""
    safe: dict[str, str] = {}
    for name, value in frame_locals.items():
        if _hidden(name):
            safe[name] = REDACTED
            continue
        try:
            # A string is scrubbed before repr() escapes its quotes (a local holding rendered text).
            text = repr(scrub_text(value)) if isinstance(value, str) else repr(value)
        except Exception as exc:  # a broken __repr__ must not break error reporting
            text = f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
        safe[name] = scrub_text(text)
    return safe


def format_exception(exc: BaseException, *, with_locals: bool = False) -> str:
    """The traceback of `exc` (chained causes included) as text, with every secret removed."""
    rendered = traceback.TracebackException.from_exception(exc, capture_locals=with_locals)
    if with_locals:
        for part, original in _chain(rendered, exc):
            frames = [frame for frame, _ in traceback.walk_tb(original.__traceback__)]
            if len(frames) == len(part.stack):
                for summary, frame in zip(part.stack, frames, strict=True):
                    summary.locals = scrub_locals(frame.f_locals)
            else:  # a traceback limit cut the stack: scrub the captured reprs instead
                for summary in part.stack:
                    summary.locals = scrub_locals({k: _Repr(v) for k, v in (summary.locals or {}).items()})
    return scrub_text("".join(rendered.format()))


class _Repr:
    """Shows an already captured repr as it is."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _chain(
    rendered: traceback.TracebackException, exc: BaseException
) -> list[tuple[traceback.TracebackException, BaseException]]:
    """Each rendered exception of the chain (causes, contexts, groups) with the exception it renders."""
    seen: list[tuple[traceback.TracebackException, BaseException]] = []
    todo = [(rendered, exc)]
    while todo:
        part, original = todo.pop()
        if any(part is s for s, _ in seen):
            continue
        seen.append((part, original))
        if part.__cause__ is not None and original.__cause__ is not None:
            todo.append((part.__cause__, original.__cause__))
        if part.__context__ is not None and original.__context__ is not None:
            todo.append((part.__context__, original.__context__))
        if part.exceptions and isinstance(original, BaseExceptionGroup):
            todo += list(zip(part.exceptions, original.exceptions, strict=False))
    return seen


def install_excepthook(*, with_locals: bool = False) -> None:
    """Make uncaught exceptions print scrubbed tracebacks to stderr."""

    def hook(_kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        sys.stderr.write(format_exception(exc.with_traceback(tb), with_locals=with_locals))

    sys.excepthook = hook
