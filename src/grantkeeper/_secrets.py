"""`Secret`: the only type a token or client secret travels in.

Masking lives in the type so that no logger, traceback, repr or JSON encoder sees the value: the one way
out is `.reveal()`, called where the value is put on the wire or encrypted.

Every live `Secret` of 8 characters or more is also known by value to `grantkeeper.redact` (through
`live_values_in`), so a token pasted into an unrelated log message or exception is still caught. The
registry counts the live Secrets per value and forgets a value once the last one holding it is collected.
Values are indexed by their first 8 characters, so finding the live values in a text costs one dict lookup
per position looked at, however many tokens the process holds. Nearly every token's first 8 characters are
token characters (`TOKEN_CHARS`: word characters and ``-._~+/=``); such a value can only start inside a run of 8
or more of them, so for those only the positions inside such runs are looked at (a regex finds the runs at C
speed; in a log message most positions are spaces, punctuation and short words). The rare value with another
character in its first 8 (a passphrase with a space) is kept in a second index whose lookup visits every position.
"""

from __future__ import annotations

import hmac
import re
import string
import threading
from typing import NoReturn

__all__ = ["Secret", "live_values_in"]

#: Shorter values are not redacted by value: they would cut ordinary words out of messages.
MIN_REDACTED_LENGTH = 8
#: Where a value's first 8 characters are nearly always found: runs of `\w` (letters, digits, ``_``, as `re` reads
#: them) and the rest of RFC 6749's token68 syntax.
TOKEN_CHARS = r"[\w\-.~+/=]"
#: `str.strip` removes these from both ends, so a prefix made of nothing else strips to "" (one C call). The same
#: characters as `TOKEN_CHARS` in ASCII text.
_ASCII_TOKEN_CHARS = string.ascii_letters + string.digits + "_-.~+/="
_ASCII_CLASS = r"[A-Za-z0-9_\-.~+/=]"
# The runs of 8 or more: a lookbehind so that a short run is given up once, not again at each of its characters;
# for ASCII text (nearly all) the same class spelled in ASCII, which sre tests several times faster than `\w`.
_runs = re.compile(f"(?<!{TOKEN_CHARS}){TOKEN_CHARS}{{{MIN_REDACTED_LENGTH},}}").findall
_ascii_runs = re.compile(f"(?<!{_ASCII_CLASS}){_ASCII_CLASS}{{{MIN_REDACTED_LENGTH},}}").findall
_live_count: dict[str, int] = {}
# Both indexes: first 8 characters -> the values; values replaced, never mutated: readers need no lock.
_by_prefix: dict[str, tuple[str, ...]] = {}  # prefixes of TOKEN_CHARS only
_odd_by_prefix: dict[str, tuple[str, ...]] = {}  # every other prefix
_live_lock = threading.Lock()
#: Values whose Secret was collected. The garbage collector runs finalizers at any allocation, even inside
#: `_remember` with the lock held, so the finalizer only appends here (atomic, never blocks); the next lookup, or the
#: `_remember` that finds `_DRAIN_AT` of them waiting, applies the removals under the lock.
_collected: list[str] = []
#: In batches: applying them one call per Secret made cost about what sorting a new value into its index costs,
#: and `Secret()` stays as cheap as it was. A value waiting here is redacted a little longer, never less.
_DRAIN_AT = 64


def _remember(value: str) -> None:
    prefix = value[:MIN_REDACTED_LENGTH]
    # Two C calls, no regex: every character `isalnum` accepts is `\w` to `re`, and every one of
    # `_ASCII_TOKEN_CHARS` is in `TOKEN_CHARS`. A prefix that fails both only costs its lookups a full scan.
    index = _by_prefix if prefix.isalnum() or not prefix.strip(_ASCII_TOKEN_CHARS) else _odd_by_prefix
    with _live_lock:
        if len(_collected) >= _DRAIN_AT:
            _apply_collected()
        count = _live_count.get(value, 0)
        _live_count[value] = count + 1
        if count == 0:  # a tuple: nearly every prefix holds one value, and every cold token read makes a new one
            held = index.get(prefix)
            index[prefix] = (value,) if held is None else (*held, value)  # no unpacking in the usual case


def _apply_collected() -> None:
    """Drop one count per collected Secret; forget a value when none holds it any more (lock held)."""
    while _collected:
        value = _collected.pop()
        count = _live_count.pop(value, 1) - 1
        if count > 0:
            _live_count[value] = count
            continue
        prefix = value[:MIN_REDACTED_LENGTH]
        index = _by_prefix
        held = index.get(prefix, ())
        if value not in held:  # then it is in the other index
            index = _odd_by_prefix
            held = index.get(prefix, ())
        if held == (value,):
            index.pop(prefix, None)
        elif held:
            index[prefix] = tuple(v for v in held if v != value)


def live_values_in(text: str) -> list[str]:
    """The values of live Secrets that occur in `text`, longest first (replace them in that order).

    A value whose last Secret was just collected may still be found until the next Secret is made: it is
    redacted once more than needed, never less.
    """
    if _collected and _live_lock.acquire(blocking=False):
        try:
            _apply_collected()
        finally:
            _live_lock.release()
    if len(text) < MIN_REDACTED_LENGTH:
        return []
    found: set[str] = set()
    if _by_prefix:
        get = _by_prefix.get
        for run in (_ascii_runs if text.isascii() else _runs)(text):
            for i in range(len(run) - MIN_REDACTED_LENGTH + 1):
                candidates = get(run[i : i + MIN_REDACTED_LENGTH])
                if candidates:  # `in`, not at `i`: the value is found if it occurs anywhere, as before
                    found.update(v for v in candidates if v in text)
    if _odd_by_prefix:
        get = _odd_by_prefix.get
        for i in range(len(text) - MIN_REDACTED_LENGTH + 1):
            candidates = get(text[i : i + MIN_REDACTED_LENGTH])
            if candidates:
                found.update(v for v in candidates if text.startswith(v, i))
    return sorted(found, key=len, reverse=True) if found else []


class Secret:
    """A string that refuses to be shown.

    `repr`, `str` and `format` print `Secret('**********')`; pickling and copying to JSON fail, so the value
    cannot leave the process by accident. Equality is constant-time.
    """

    __slots__ = ("__weakref__", "_registered", "_value")

    def __init__(self, value: str) -> None:
        self._registered = False  # read by `__del__`, which runs even when this raises
        if not isinstance(value, str):
            raise TypeError("Secret holds a str")
        self._value = value
        self._registered = registered = len(value) >= MIN_REDACTED_LENGTH
        if registered:
            _remember(value)

    def __del__(self) -> None:
        # `__del__` rather than `weakref.finalize`: a finalizer costs as much to set up as the rest of a Secret, and
        # every cold token read makes one. Only an append here (see `_collected`). A `SealedSecret` revealed by two
        # threads at once registers twice and is dropped once: its value stays redacted, never the other way.
        if self._registered:
            _collected.append(self._value)

    def reveal(self) -> str:
        """Return the plain value. Call only where it is sent or encrypted."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    # Every operation reads the value through `reveal`, so a subclass that holds it differently (a value decrypted
    # on first use, `keys.crypto.SealedSecret`) needs only to override `reveal`.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self.reveal().encode(), other.reveal().encode())

    def __hash__(self) -> int:
        return hash(("grantkeeper.Secret", self.reveal()))

    def __bool__(self) -> bool:
        return bool(self.reveal())

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled; store it through a grantkeeper store instead")

    def __len__(self) -> int:
        return len(self.reveal())
