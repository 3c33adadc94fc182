"""Token set: what one successful token-endpoint response gave us; the syntax a token value must have."""

from __future__ import annotations

import re
from dataclasses import dataclass

from grantkeeper._secrets import Secret

__all__ = ["MAX_TOKEN_CHARS", "TokenSet", "access_token_ok", "refresh_token_ok"]

#: Longest token value accepted (characters). Real tokens are at most a few KiB (large JWTs).
MAX_TOKEN_CHARS = 16384
#: Refresh tokens only ever travel form-encoded in a request body: RFC 6749 A.17, 1*VSCHAR, space included.
_REFRESH_TOKEN = re.compile(r"[\x20-\x7e]+")


def access_token_ok(value: str) -> bool:
    """May `value` go into an Authorization header and be printed?

    Access tokens go into an Authorization header and onto a terminal (`grantkeeper token`): RFC 6749 A.12 VSCHAR
    without the space, i.e. printable ASCII, 0x21-0x7e. Exactly RFC 6750 b64token would refuse Salesforce
    ("00D...!AQ..."). No control character (CR, LF, NUL, ESC, DEL), space or non-ASCII passes: no header injection,
    no split "Bearer a b", no terminal escape.
    """
    # str's own tests rather than a regex (every cold token read asks): on ASCII, ``isprintable`` is 0x20-0x7e.
    return 0 < len(value) <= MAX_TOKEN_CHARS and value.isascii() and value.isprintable() and " " not in value


def refresh_token_ok(value: str) -> bool:
    """Is `value` a refresh token by RFC 6749 syntax (1*VSCHAR)?"""
    return len(value) <= MAX_TOKEN_CHARS and _REFRESH_TOKEN.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class TokenSet:
    access_token: Secret
    token_type: str
    expires_in: float | None
    refresh_token: Secret | None = None
    scope: tuple[str, ...] | None = None
    id_token: Secret | None = None
    refresh_token_expires_in: float | None = None
