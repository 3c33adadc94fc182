"""`Secret`: the only type a token or client secret travels in.

Masking lives in the type so that no logger, traceback, repr or JSON encoder sees the value: the one way
out is `.reveal()`, called where the value is put on the wire or encrypted.
"""

from __future__ import annotations

import hmac
from typing import NoReturn

__all__ = ["Secret"]


class Secret:
    """A string that refuses to be shown.

    `repr`, `str` and `format` print `Secret('**********')`; pickling and copying to JSON fail, so the value
    cannot leave the process by accident. Equality is constant-time.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret holds a str")
        self._value = value

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
