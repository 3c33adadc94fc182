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
from collections.abc import Mapping
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
_RULES = [
    # JSON objects and Python dict reprs: "name": "value" / 'name': 'value' / "name": bare
    re.compile(rf"""(?i)(?P<head>(?P<q>["'])(?:{_ALL})(?P=q)\s*:\s*)(?P<value>{_QUOTED_VALUE}|[^\s,}}\]]+)"""),
    # header tuples in reprs: ('authorization', 'Bearer ...')
    re.compile(rf"""(?i)(?P<head>(?P<q>["'])(?:{_names(_HEADERS)})(?P=q)\s*,\s*)(?P<value>{_QUOTED_VALUE})"""),
    # header lines: Authorization: ... / Cookie: ... to the end of the line
    re.compile(rf"(?i)(?P<head>{_BEFORE}(?:{_names(_HEADERS)})\s*:[ \t]*)(?P<value>[^\r\n]+)"),
    # keyword and dataclass reprs, Python source: name='value' / name = "value"
    re.compile(rf"""(?i)(?P<head>{_BEFORE}(?:{_ALL})\s*=\s*)(?P<value>{_QUOTED_VALUE})"""),
    # form-encoded bodies and query strings: name=value up to & or whitespace
    re.compile(rf"""(?i)(?P<head>{_BEFORE}(?:{_ALL})=)(?P<value>[^&\s"'<>]+)"""),
    # free text and YAML-ish: refresh_token: value (token names only)
    re.compile(
        rf"""(?i)(?P<head>{_BEFORE}(?:{_names(_TOKEN_FIELDS)})\s*:\s*)(?P<value>{_QUOTED_VALUE}|[^\s,;}}\]]+)"""
    ),
    # credentials after an auth scheme, wherever they appear; a scheme word is not a credential ("Basic Bearer
    # <token>" must redact the token, not the word "Bearer")
    re.compile(
        r"(?i)(?P<head>\b(?:bearer|basic|dpop|mac)\s+)(?!(?:bearer|basic|dpop|mac)\s)(?P<value>[A-Za-z0-9\-._~+/]+=*)"
    ),
]


def _replace(match: re.Match[str]) -> str:
    value = match.group("value")
    if value == REDACTED or value.strip("\"'") == REDACTED:
        return match.group(0)
    quote = value[0] if value[:1] in "\"'" and len(value) > 1 and value[-1] == value[0] else ""
    return match.group("head") + quote + REDACTED + quote


def scrub_text(text: str) -> str:
    """`text` with every live secret and every credential-shaped field value replaced by REDACTED."""
    for value in live_values_in(text):
        text = text.replace(value, REDACTED)
    for rule in _RULES:
        text = rule.sub(_replace, text)
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
