"""What one OAuth token value may be, checked on input: RFC 6749 appendix A.17 (``1*VSCHAR``, printable ASCII).

Two further refusals catch the usual copy-and-paste mistakes without rejecting any token a real server issues: a
space (``Bearer xyz``, two values on one line; RFC 6750 token syntax has no space either) and a value wrapped in
double quotes (``jq`` without ``-r``). Anything refused is described by its shape (lines, length, which kind of
character where), never by its value, so the error can be shown and logged. Pure: the keeper's import checks its
input with it, and `grantkeeper.tokens.token_input` reads whole token responses around it.
"""

from __future__ import annotations

from grantkeeper._exceptions import TokenInputError
from grantkeeper._secrets import Secret

__all__ = ["check_refresh_token", "describe"]

_SCHEMES = ("bearer", "basic", "dpop", "authorization:")


def _position(value: str, index: int) -> str:
    return f"character {index + 1} of {len(value)}"


def _problem(value: str) -> str | None:
    """Why `value` is not one refresh token, as a shape (None: it is one)."""
    if not value:
        return "empty"
    if value.startswith(("{", "[")):
        return f"{len(value)} character(s) starting with {value[0]!r} (JSON?)"
    words = value.split()
    if len(words) > 1:
        first = words[0].lower()
        named = f", the first is {words[0]!r}" if first in _SCHEMES else ""
        hint = " (an Authorization header value? import only the token after the scheme)" if named else ""
        return f"{len(words)} words separated by spaces{named}{hint}"
    if (odd := _odd_character(value)) is not None:
        return odd
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return f"{len(value)} characters wrapped in double quotes (jq without -r?)"
    return None


def _odd_character(value: str) -> str | None:
    """The first character outside printable ASCII, described by kind and position."""
    for index, char in enumerate(value):
        code = ord(char)
        if code > 0x7E:
            return f"a non-ASCII character at {_position(value, index)}"
        if code < 0x21:
            return f"a control character (0x{code:02x}) at {_position(value, index)}"
    return None


def describe(text: str) -> str:
    """The shape of `text` for an error message: line count, length, what is wrong. Never the value itself."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > 1:
        first = lines[0].strip()
        start = f", the first starting with {first[0]!r}" if first[:1] in "{[\"'<" else ""
        return f"{len(lines)} non-empty lines, {len(text.strip())} characters{start}"
    return _problem(text.strip()) or f"one token value of {len(text.strip())} characters"


def check_refresh_token(value: str | Secret, *, what: str = "the refresh token") -> Secret:
    """`value` (surrounding whitespace stripped) as a `Secret` if it is one refresh token, else `TokenInputError`
    saying what it looks like instead."""
    text = (value.reveal() if isinstance(value, Secret) else value).strip()
    problem = _problem(text)
    if problem is not None:
        raise TokenInputError(
            f"{what} to import is not a single OAuth token value (RFC 6749: printable ASCII, no spaces): it is "
            f"{problem}. Nothing was stored; give the refresh token alone, or the provider's whole JSON token "
            "response"
        )
    return Secret(text)
