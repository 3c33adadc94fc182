"""One exchange with a token endpoint, as data: the request the protocol asks for and what came of sending it.

The split that matters for "spend once" (I2): `NotSent` means the refresh token cannot have reached the provider
(connect failed, or the deadline passed before a byte of the request was written); `Ambiguous` means it may have
(timeout, reset or deadline after the request was written); both are a `NoAnswer`, with its reason. `HttpReply`
is an answer, whatever its status.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

from grantkeeper._secrets import Secret
from grantkeeper.model.provider import Provider

__all__ = ["Ambiguous", "HttpReply", "NoAnswer", "NotSent", "RefreshRequest", "SendResult"]


@dataclass(frozen=True, slots=True)
class RefreshRequest:
    """A refresh_token grant to send to `provider`'s token endpoint. The sender builds the HTTP request from it
    (client authentication, the client secret or private key, the assertion's clock), outside the protocol."""

    provider: Provider
    refresh_token: Secret
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class NoAnswer:
    """No HTTP answer came back; `reason` says why (for messages and the history; never a token)."""

    reason: str


class NotSent(NoAnswer):
    """The request cannot have reached the provider: the refresh token was not spent."""

    __slots__ = ()


class Ambiguous(NoAnswer):
    """The request may have reached the provider: the refresh token may have been spent."""

    __slots__ = ()


SendResult: TypeAlias = HttpReply | NotSent | Ambiguous
