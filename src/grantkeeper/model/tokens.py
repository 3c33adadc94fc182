"""Token set: what one successful token-endpoint response gave us."""

from __future__ import annotations

from dataclasses import dataclass

from grantkeeper._secrets import Secret

__all__ = ["TokenSet"]


@dataclass(frozen=True, slots=True)
class TokenSet:
    access_token: Secret
    token_type: str
    expires_in: float | None
    refresh_token: Secret | None = None
    scope: tuple[str, ...] | None = None
    id_token: Secret | None = None
    refresh_token_expires_in: float | None = None
