"""`Secret`: the only type a token or client secret travels in.

Masking lives in the type so that no logger, traceback, repr or JSON encoder sees the value: the one way
out is `.reveal()`, called where the value is put on the wire or encrypted.

Every live `Secret` of 8 characters or more is also known by value to `grantkeeper.redact` (through
`live_values_in`), so a token pasted into an unrelated log message or exception is still caught. The
registry counts the live Secrets per value and forgets a value once the last one holding it is collected.

Values are indexed by their first 8 characters, so finding the live values in a text costs one dict lookup per
position looked at, however many tokens the process holds: a log line costs what its positions cost. Nearly every
token is long and made of token characters (`TOKEN_CHARS`: word characters and ``-._~+/=``), so it can only start
inside a run of them as long as it is. A value whose first `LONG` characters are token characters is looked for
only in runs of `LONG` or more, up to `LONG` characters before each run ends; in a log line most text (words, ids,
fingerprints, time stamps) is in no such run, and the runs are found at C speed (`bytes.translate` and `split` for
ASCII text, a regex for the rest). Shorter values of token
characters are looked for in runs of 8 or more, and the rare value with another character in its first 8 (a
passphrase with a space) at every position. Each kind has its own index; a kind with nothing live costs nothing.

`Secret()` only tells a token-character prefix from another (two C calls on 8 characters) and files the value
under `_fresh`, looked for like the short ones; the next lookup moves fresh values to `_long` or `_short`, once
each, so the lookups pay for the finer sorting and making a Secret costs what it did.
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
#: Values at least this long, their first `LONG` characters all token characters, are looked for only in runs of
#: this many token characters or more: longer than a fingerprint (``fp_`` and 16 hex digits), a time stamp's
#: parts, most names and words; shorter than the tokens providers issue (JWTs, 32-byte random strings).
LONG = 20
#: The characters tokens are made of: `\w` (letters, digits, ``_``, as `re` reads them) and the rest of RFC 6749's
#: token68 syntax.
TOKEN_CHARS = r"[\w\-.~+/=]"
#: The same characters in ASCII text. `str.strip` removes them from both ends, so a string made of nothing else
#: strips to "" (one C call, no regex); and every character `str.isalnum` accepts is `\w` to `re`.
_ASCII_TOKEN_CHARS = string.ascii_letters + string.digits + "_-.~+/="


#: For ASCII text (nearly all log text): token characters kept, every other byte a space, so `bytes.split` gives
#: the runs. Two C calls, several times faster than a regex testing a character class at every position.
_RUN_BYTES = bytes(c if chr(c) in _ASCII_TOKEN_CHARS else 0x20 for c in range(256))
_unicode_runs = re.compile(f"{TOKEN_CHARS}+").findall


def _runs(text: str, shortest: int) -> list[str]:
    """The maximal runs of token characters in `text`, those at least `shortest` long."""
    if text.isascii():
        return [run.decode() for run in text.encode().translate(_RUN_BYTES).split() if len(run) >= shortest]
    return [run for run in _unicode_runs(text) if len(run) >= shortest]


def _tokenish(text: str) -> bool:
    return text.isalnum() or not text.strip(_ASCII_TOKEN_CHARS)


_live_count: dict[str, int] = {}
# The indexes: first 8 characters -> values. Tuples replaced, never mutated, so readers need no lock.
_long: dict[str, tuple[str, ...]] = {}  # `LONG` characters or more, the first `LONG` of them token characters
_short: dict[str, tuple[str, ...]] = {}  # the other values whose first 8 characters are token characters
_fresh: dict[str, tuple[str, ...]] = {}  # either of those, made since the last lookup sorted them
_odd: dict[str, tuple[str, ...]] = {}  # every other value
#: Where `_apply_collected` looks for a value, in this order: a process that never logs leaves every value fresh.
_INDEXES = (_fresh, _long, _short, _odd)
#: How `live_values_in` reads the indexes of token-character values: in runs at least this long, up to this many
#: characters before a run's end.
_TIERS = ((_fresh, MIN_REDACTED_LENGTH), (_long, LONG), (_short, MIN_REDACTED_LENGTH))
_live_lock = threading.Lock()
#: Values whose Secret was collected. The garbage collector runs finalizers at any allocation, even inside
#: `_remember` with the lock held, so the finalizer only appends here (atomic, never blocks); the next lookup, or the
#: `_remember` that finds `_DRAIN_AT` of them waiting, applies the removals under the lock.
_collected: list[str] = []
#: In batches: applying them one call per Secret made cost about what filing a new value costs. A value waiting
#: here is redacted a little longer, never less.
_DRAIN_AT = 64


def _add(index: dict[str, tuple[str, ...]], prefix: str, value: str) -> None:
    # A tuple, replaced: nearly every prefix holds one value, and every cold token read makes a new one.
    held = index.get(prefix)
    index[prefix] = (value,) if held is None else (*held, value)  # no unpacking in the usual case


def _remember(value: str) -> None:
    prefix = value[:MIN_REDACTED_LENGTH]
    index = _fresh if prefix.isalnum() or not prefix.strip(_ASCII_TOKEN_CHARS) else _odd  # `_tokenish`, inlined
    with _live_lock:
        if len(_collected) >= _DRAIN_AT:
            _apply_collected()
        count = _live_count.get(value, 0)
        _live_count[value] = count + 1
        if count == 0:  # `_add`, inlined: a call costs a tenth of what making a Secret does
            held = index.get(prefix)
            index[prefix] = (value,) if held is None else (*held, value)


def _apply_collected() -> None:
    """Drop one count per collected Secret; forget a value when none holds it any more (lock held)."""
    while _collected:
        value = _collected.pop()
        count = _live_count.pop(value, 1) - 1
        if count > 0:
            _live_count[value] = count
            continue
        prefix = value[:MIN_REDACTED_LENGTH]
        for index in _INDEXES:
            held = index.get(prefix)
            if held is not None and value in held:
                if len(held) == 1:
                    del index[prefix]
                else:
                    index[prefix] = tuple(v for v in held if v != value)
                break


def _sort_fresh() -> None:
    """Move every fresh value to `_long` or `_short` (lock held). Added there before it leaves `_fresh`, so a
    lookup running meanwhile without the lock finds it in one or the other."""
    for prefix, values in list(_fresh.items()):
        for value in values:
            _add(_long if len(value) >= LONG and _tokenish(value[:LONG]) else _short, prefix, value)
        del _fresh[prefix]


def live_values_in(text: str) -> list[str]:
    """The values of live Secrets that occur in `text`, longest first (replace them in that order).

    A value whose last Secret was just collected may still be found until the lock is next free here: it is
    redacted once more than needed, never less.
    """
    if (_collected or _fresh) and _live_lock.acquire(blocking=False):
        try:
            _apply_collected()
            _sort_fresh()
        finally:
            _live_lock.release()
    if len(text) < MIN_REDACTED_LENGTH or (len(text) < LONG and not (_fresh or _short or _odd)):
        return []  # too short for any value, or for any but long ones (a logger's name, a level, an id)
    found: set[str] = set()
    runs = _runs(text, MIN_REDACTED_LENGTH if _fresh or _short else LONG) if _fresh or _long or _short else []
    # `_fresh` first: `_sort_fresh` adds a value to `_long` or `_short` before it takes it out of `_fresh`, so a value
    # missed in `_fresh` here had already been added to the others, which are read after.
    for index, width in _TIERS:
        if index:
            get = index.get
            for run in runs:
                for i in range(len(run) - width + 1):  # none in a run shorter than `width`
                    held = get(run[i : i + MIN_REDACTED_LENGTH])
                    if held:  # `in text`, not at `i`: a value is found wherever it occurs, as before
                        found.update(v for v in held if v in text)
    if _odd:
        get = _odd.get
        for i in range(len(text) - MIN_REDACTED_LENGTH + 1):
            held = get(text[i : i + MIN_REDACTED_LENGTH])
            if held:
                found.update(v for v in held if text.startswith(v, i))
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
