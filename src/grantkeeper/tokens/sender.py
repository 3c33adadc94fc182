"""The HTTP adapters of the engine's `Sender` ports: build the refresh request (client authentication, the client
secret from its environment variable, a ``private_key_jwt`` assertion signed now) and send it with
`grantkeeper.tokens.transport`, one wall-clock deadline per exchange."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from grantkeeper.model.exchange import RefreshRequest, SendResult
from grantkeeper.tokens import transport
from grantkeeper.tokens.request import build_refresh_request

__all__ = ["AsyncHttpSender", "HttpSender"]


def _build(request: RefreshRequest) -> httpx.Request:
    return build_refresh_request(request.provider, request.refresh_token, scopes=request.scopes)


@dataclass(frozen=True, slots=True)
class HttpSender:
    client: httpx.Client

    def send(self, request: RefreshRequest, *, budget: float) -> SendResult:
        return transport.send(self.client, _build(request), budget=budget)


@dataclass(frozen=True, slots=True)
class AsyncHttpSender:
    client: httpx.AsyncClient

    async def send(self, request: RefreshRequest, *, budget: float) -> SendResult:
        return await transport.asend(self.client, _build(request), budget=budget)
