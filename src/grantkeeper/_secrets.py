"""`Secret`: the only type a token or client secret travels in.

Masking lives in the type so that no logger, traceback, repr or JSON encoder sees the value: the one way
out is `.reveal()`, called where the value is put on the wire or encrypted.

Every live `Secret` of 8 characters or more is also known by value to `grantkeeper.redact` (through
`live_values`), so a token pasted into an unrelated log message or exception is still caught. The registry
holds weak references only: a value is forgotten when the last `Secret` holding it is gone.
"""

from __future__ import annotations

import hmac
import threading
import weakref
from typing import NoReturn

__all__ = ["Secret", "live_values"]

#: Shorter values are not redacted by value: they would cut ordinary words out of messages.
MIN_REDACTED_LENGTH = 8
_live: weakref.WeakValueDictionary[str, Secret] = weakref.WeakValueDictionary()
_live_lock = threading.Lock()


def live_values() -> list[str]:
    """Every value held by a live Secret (>= 8 characters), longest first, for redaction by value."""
    with _live_lock:
        values = list(_live.keys())
    return sorted(values, key=len, reverse=True)


class Secret:
    """A string that refuses to be shown.

    `repr`, `str` and `format` print `Secret('**********')`; pickling and copying to JSON fail, so the value
    cannot leave the process by accident. Equality is constant-time.
    """

    __slots__ = ("__weakref__", "_value")

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret holds a str")
        self._value = value
        if len(value) >= MIN_REDACTED_LENGTH:
            with _live_lock:
                _live[value] = self

    def reveal(self) -> str:
        """Return the plain value. Call only where it is sent or encrypted."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(("grantkeeper.Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled; store it through a grantkeeper store instead")

    def __len__(self) -> int:
        return len(self._value)
