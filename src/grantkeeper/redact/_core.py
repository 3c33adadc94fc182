"""`scrub`: the rules every redaction helper applies, by field name and by value.

By value: every live `Secret` (tokens and client secrets the keeper holds) is cut out wherever it appears.
By field name, in the syntaxes secrets travel in:

* form-encoded and query strings: ``refresh_token=...&...``;
* JSON and Python reprs: ``"access_token": "..."``, ``'client_secret': '...'``, ``refresh_token='...'``;
* headers: ``Authorization: ...``, ``Cookie: ...`` (to the end of the line), ``('authorization', '...')``;
* credentials wherever they stand: ``Bearer ...``, ``Basic ...``, ``DPoP ...``.

Mappings are scrubbed by key (any key in `SENSITIVE_KEYS`, any case), recursively; nothing is mutated.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from typing import Any

from grantkeeper._secrets import Secret, live_values_in

__all__ = ["REDACTED", "SENSITIVE_KEYS", "is_sensitive_key", "scrub", "scrub_text"]

REDACTED = "[redacted]"
_TOKEN_FIELDS = ("access_token", "refresh_token", "id_token", "client_secret", "client_assertion", "assertion",
                 "code_verifier", "subject_token", "actor_token")  # fmt: skip
# Names too common to redact after a bare colon ("exit code: 3"): only in form, JSON and repr syntax.
_WORD_FIELDS = ("code", "password", "token")
_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie")
SENSITIVE_KEYS = frozenset(_TOKEN_FIELDS + _WORD_FIELDS + _HEADERS)


def _names(names: tuple[str, ...]) -> str:
    return "|".join(sorted((re.escape(n) for n in names), key=len, reverse=True))


_ALL = _names(_TOKEN_FIELDS + _WORD_FIELDS + _HEADERS)
_QUOTED_VALUE = r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'"""
_BEFORE = r"(?<![\w-])"
_SCHEMES = ("bearer", "basic", "dpop", "mac")


def _needles(names: tuple[str, ...], common: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Few strings that every one of `names` contains: a `common` part where it has one (``_token``), else the
    shortest names that the others contain (``cookie`` for ``set-cookie``)."""
    kept: list[str] = []
    for name in sorted({next((c for c in common if c in n), n) for n in names}, key=len):
        if not any(k in name for k in kept):
            kept.append(name)
    return tuple(kept)


# Non-ASCII characters that `re`'s case-insensitive matching takes for an ASCII letter (U+0130 and U+0131 for
# ``i``, U+017F for ``s``, U+212A for ``k``); tests/redact checks this against every code point.
_ASCII_TWINS = {"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"}
_FOLD = str.maketrans({**{c: c.lower() for c in string.ascii_uppercase}, **_ASCII_TWINS})


def _folded(text: str) -> str:
    """`text` with every character a rule's ``(?i)`` name could match as an ASCII letter turned into that
    lowercase letter, and nothing else changed: a name a rule can match is then in it, as a plain substring."""
    return text.lower() if text.isascii() else text.translate(_FOLD)


def _has(*needles: str) -> Callable[[str], bool]:
    def has(folded: str) -> bool:
        for needle in needles:  # noqa: SIM110 - a loop costs half what any() does for these few needles
            if needle in folded:
                return True
        return False

    return has


def _quoted_name(names: str) -> Callable[[str], bool]:
    """Whether a quote directly precedes one of `names` and another follows it. One search per quote: a pattern
    starting with a literal is searched for at C speed, one starting with ``["']`` is tried at every position."""
    single, double = (re.compile(f"{q}(?:{names}){q}").search for q in ("'", '"'))
    return lambda folded: single(folded) is not None or double(folded) is not None


_ANY_FIELD = _has(*_needles(_TOKEN_FIELDS + _WORD_FIELDS + _HEADERS))
_HEADER = _has(*_needles(_HEADERS))
_TOKEN_FIELD = _has(*_needles(_TOKEN_FIELDS, ("_token",)))
#: Every rule needs one of these characters to match: a quote, ``:``, ``=`` or white space.
_SYNTAX = re.compile(r"[\s\"':=]").search
_RULES: list[tuple[re.Pattern[str], str, Callable[[str], bool]]] = [
    # (rule, a character it cannot match without, a test on the folded text it cannot match without)
    # JSON objects and Python dict reprs: "name": "value" / 'name': 'value' / "name": bare
    (re.compile(rf"""(?i)(?P<head>(?P<q>["'])(?:{_ALL})(?P=q)\s*:\s*)(?P<value>{_QUOTED_VALUE}|[^\s,}}\]]+)"""), ":",
     _quoted_name(_ALL)),
    # header tuples in reprs: ('authorization', 'Bearer ...')
    (re.compile(rf"""(?i)(?P<head>(?P<q>["'])(?:{_names(_HEADERS)})(?P=q)\s*,\s*)(?P<value>{_QUOTED_VALUE})"""), ",",
     _quoted_name(_names(_HEADERS))),
    # header lines: Authorization: ... / Cookie: ... to the end of the line
    (re.compile(rf"(?i)(?P<head>{_BEFORE}(?:{_names(_HEADERS)})\s*:[ \t]*)(?P<value>[^\r\n]+)"), ":", _HEADER),
    # keyword and dataclass reprs, Python source: name='value' / name = "value"
    (re.compile(rf"""(?i)(?P<head>{_BEFORE}(?:{_ALL})\s*=\s*)(?P<value>{_QUOTED_VALUE})"""), "=", _ANY_FIELD),
    # form-encoded bodies and query strings: name=value up to & or whitespace
    (re.compile(rf"""(?i)(?P<head>{_BEFORE}(?:{_ALL})=)(?P<value>[^&\s"'<>]+)"""), "=", _ANY_FIELD),
    # free text and YAML-ish: refresh_token: value (token names only)
    (re.compile(
        rf"""(?i)(?P<head>{_BEFORE}(?:{_names(_TOKEN_FIELDS)})\s*:\s*)(?P<value>{_QUOTED_VALUE}|[^\s,;}}\]]+)"""
    ), ":", _TOKEN_FIELD),
    # credentials after an auth scheme, wherever they appear; a scheme word is not a credential ("Basic Bearer
    # <token>" must redact the token, not the word "Bearer")
    (re.compile(
        r"(?i)(?P<head>\b(?:bearer|basic|dpop|mac)\s+)(?!(?:bearer|basic|dpop|mac)\s)(?P<value>[A-Za-z0-9\-._~+/]+=*)"
    ), "", _has(*_SCHEMES)),
]  # fmt: skip


def _replace(match: re.Match[str]) -> str:
    value = match.group("value")
    if value == REDACTED or value.strip("\"'") == REDACTED:
        return match.group(0)
    quote = value[0] if value[:1] in "\"'" and len(value) > 1 and value[-1] == value[0] else ""
    return match.group("head") + quote + REDACTED + quote


def scrub_text(text: str) -> str:
    """`text` with every live secret and every credential-shaped field value replaced by REDACTED.

    The rules run in order, each on what the one before returned; a rule is skipped only when the text lacks
    something it cannot match without (a character of its syntax, one of its names), which C-speed ``in`` tests
    and quote-anchored searches tell far faster than the rule's own case-insensitive search would. Most log text
    (an attempt line, a time stamp, an id) runs none of them.
    """
    for value in live_values_in(text):
        text = text.replace(value, REDACTED)
    if _SYNTAX(text) is None:
        return text
    folded = _folded(text)
    for rule, char, names_in in _RULES:
        if char in text and names_in(folded):
            scrubbed = rule.sub(_replace, text)
            if scrubbed != text:
                text, folded = scrubbed, _folded(scrubbed)
    return text


def is_sensitive_key(key: object) -> bool:
    return isinstance(key, str) and key.lower() in SENSITIVE_KEYS


def scrub(value: Any) -> Any:
    """A copy of `value` with secrets removed (strings, mappings, sequences, sets). Never mutates its argument.

    Other objects are returned as they are: format them first if their text could carry a secret.
    """
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, bytes):
        return scrub_text(value.decode("utf-8", errors="replace"))
    if isinstance(value, Mapping):
        return {k: REDACTED if is_sensitive_key(k) else scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return type(value)(scrub(v) for v in value)
    return value
