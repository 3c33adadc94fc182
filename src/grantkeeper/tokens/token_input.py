"""What a person gives `grant import`: one refresh token, or a whole token response. Checked, never guessed.

A refresh token is one RFC 6749 token value (appendix A.17: ``1*VSCHAR``, printable ASCII). Two further
refusals catch the usual copy-and-paste mistakes without rejecting any token a real server issues: a space
(``Bearer xyz``, two values on one line; RFC 6750 token syntax has no space either) and a value wrapped in
double quotes (``jq`` without ``-r``). Anything refused is described by its shape (lines, length, which kind
of character where), never by its value, so the error can be shown and logged.

A token response (the JSON object a token endpoint returns, one line or pretty-printed) is read with the same
parser refreshes use (`grantkeeper.tokens.response.interpret`): its ``refresh_token`` is the grant's, and its
access token, expiry and scope come along.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from grantkeeper._exceptions import TokenInputError
from grantkeeper._secrets import Secret
from grantkeeper.tokens.response import HttpReply, Malformed, Success, interpret

__all__ = ["ImportedTokens", "check_refresh_token", "describe", "looks_like_json", "read_token_input"]

#: Field names of a token response that may be named in a message (a key could be anything: never echo others).
_KNOWN_FIELDS = ("access_token", "refresh_token", "token_type", "expires_in", "scope", "id_token",
                 "refresh_token_expires_in", "error", "error_description")  # fmt: skip
_SCHEMES = ("bearer", "basic", "dpop", "authorization:")


@dataclass(frozen=True, slots=True)
class ImportedTokens:
    """What an import brings: the refresh token, and from a token response also the access token (only with a
    known expiry: ``expires_in``, or a JWT's ``exp``), its scopes and the refresh token's stated expiry."""

    refresh_token: Secret
    access_token: Secret | None = None
    expires_at: float | None = None
    scopes: tuple[str, ...] = ()
    refresh_expires_at: float | None = None
    from_response: bool = False


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


def looks_like_json(text: str) -> bool:
    """Whether `text` starts like a JSON object (a token response), so a reader should read it whole."""
    return text.lstrip().startswith("{")


def read_token_input(text: str, *, issued_at: float) -> ImportedTokens:
    """`text` as what to import: a token response (a JSON object: its ``refresh_token`` and access token), or one
    refresh token. Anything else is a `TokenInputError` that describes its shape.

    `issued_at` is when the token response was issued, which its relative lifetimes (``expires_in``) count from:
    now for a response piped straight from the token endpoint, the modification time of a file it was saved to.
    """
    if not looks_like_json(text):
        if len([line for line in text.splitlines() if line.strip()]) > 1:
            raise TokenInputError(
                f"the refresh token to import is not a single OAuth token value: read {describe(text)}. Nothing "
                "was stored; give the refresh token alone on one line, or the provider's whole JSON token response"
            )
        return ImportedTokens(check_refresh_token(text))
    return _from_response(text, issued_at)


def _from_response(text: str, issued_at: float) -> ImportedTokens:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise TokenInputError(
            f"the input starts like a JSON token response but is not valid JSON ({describe(text)}). Nothing was "
            "stored; give the provider's whole token response, or the refresh token alone"
        ) from None
    if not isinstance(data, dict):
        raise TokenInputError("the input is JSON but not an object; give the provider's token response (an object "
                              "with refresh_token) or the refresh token alone. Nothing was stored")  # fmt: skip
    fields = [k for k in _KNOWN_FIELDS if k in data]
    others = len(data) - len(fields)
    has = ", ".join(fields) or "no token-response fields"
    has += f" and {others} other key(s)" if others else ""
    refresh = data.get("refresh_token")
    if not isinstance(refresh, str) or not refresh.strip():
        raise TokenInputError(
            f"the JSON token response has no refresh_token string (it has {has}); a grant needs a refresh token: "
            "ask the provider for offline access (e.g. the offline_access scope). Nothing was stored"
        )
    token = check_refresh_token(refresh, what="the refresh_token in the JSON token response")
    if "access_token" not in data:
        return ImportedTokens(token, from_response=True, scopes=_scopes(data.get("scope")))
    answer = interpret(HttpReply(200, {}, json.dumps(data).encode()), issued_at)
    if isinstance(answer, Malformed):
        raise TokenInputError(f"the JSON token response is not one a token endpoint would give: {answer.reason} (it "
                              f"has {has}). Nothing was stored")  # fmt: skip
    if not isinstance(answer, Success):
        raise TokenInputError(f"the JSON is an error response, not a token response (it has {has}). Nothing was "
                              "stored")  # fmt: skip
    tokens = answer.token_set
    expires_at = None if tokens.expires_in is None else issued_at + tokens.expires_in
    rt_expires = tokens.refresh_token_expires_in
    return ImportedTokens(
        token, access_token=tokens.access_token if expires_at is not None else None, expires_at=expires_at,
        scopes=tokens.scope or (), refresh_expires_at=None if rt_expires is None else issued_at + rt_expires,
        from_response=True,
    )  # fmt: skip


def _scopes(value: object) -> tuple[str, ...]:
    return tuple(value.split()) if isinstance(value, str) else ()
