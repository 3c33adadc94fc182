"""The JSON shapes of the API, for validation and for /openapi.json. Fingerprints only, except `TokenResponse`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = ["GrantSummary", "Problem", "Readiness", "RefreshResponse", "RejectedRequest", "RejectedResponse",
           "TokenResponse"]  # fmt: skip


class TokenResponse(BaseModel):
    access_token: str = Field(description="The access token. The refresh token is never returned by any route.")
    token_type: str = Field(description="Always Bearer.")
    expires_at: float = Field(description="When the provider said the access token expires (Unix seconds).")
    generation: int = Field(description="The grant's generation this token belongs to.")
    fingerprint: str = Field(description="The token's keyed fingerprint, as logs and the audit trail show it.")


class RefreshResponse(BaseModel):
    name: str
    refreshed: bool = Field(description="Whether this call moved the grant to a new generation.")
    generation: int
    refresh_fp: str | None
    access_fp: str | None
    expires_at: float | None


class RejectedRequest(BaseModel):
    access_token: str = Field(min_length=1, max_length=8192, description="The access token a resource server "
                              "answered 401 to.")  # fmt: skip


class RejectedResponse(BaseModel):
    name: str
    invalidated: bool = Field(description="False if the token was no longer the grant's current one.")


class GrantSummary(BaseModel):
    name: str
    provider: str
    state: str
    generation: int
    refresh_fp: str | None
    access_fp: str | None
    expires_at: float | None


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, dict[str, Any]]


class Problem(BaseModel):
    """RFC 9457 problem details, with grantkeeper's error code and the doctor's class."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    doctor_class: str | None = None
    grant: str | None = None
    evidence: dict[str, Any] | None = None
