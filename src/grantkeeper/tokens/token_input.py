"""What a person gives `grant import`: one refresh token, or a whole token response. Checked, never guessed.

A refresh token is one RFC 6749 token value (appendix A.17: ``1*VSCHAR``, printable ASCII), checked by
`grantkeeper.model.token_values` (re-exported here), which also refuses a space and a value wrapped in double
quotes. Anything refused is described by its shape (lines, length, which kind of character where), never by
its value, so the error can be shown and logged.

A token response (the JSON object a token endpoint returns, one line or pretty-printed) is read with the same
parser refreshes use (`grantkeeper.protocol.answers.interpret`): its ``refresh_token`` is the grant's, and its
access token, expiry and scope come along.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from grantkeeper._exceptions import TokenInputError
from grantkeeper._secrets import Secret
from grantkeeper.model.token_values import check_refresh_token, describe
from grantkeeper.protocol.answers import HttpReply, Malformed, Success, interpret

__all__ = ["ImportedTokens", "check_refresh_token", "describe", "looks_like_json", "read_token_input"]

#: Field names of a token response that may be named in a message (a key could be anything: never echo others).
_KNOWN_FIELDS = ("access_token", "refresh_token", "token_type", "expires_in", "scope", "id_token",
                 "refresh_token_expires_in", "error", "error_description")  # fmt: skip


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
