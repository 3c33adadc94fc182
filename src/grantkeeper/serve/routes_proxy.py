"""``/v1/proxy/{name}/{path}``: the request, forwarded to the grant's provider API with its access token.

The token comes from `Broker.token` (the keeper's one refresh path); a 401 ``invalid_token`` from the API is
reported to the keeper and the request re-sent once (`grantkeeper.serve.proxy`). The caller never sees the token.
One keep-alive aiohttp session per provider network (CA bundle, proxy, API origin) is kept for the app's lifetime
(`grantkeeper.serve.upstream`).
"""

from __future__ import annotations

from typing import Annotated, Any

import aiohttp
import httpx
from fastapi import APIRouter, Request
from starlette.responses import Response

from grantkeeper.integrations._flow import checked_token
from grantkeeper.model import Provider
from grantkeeper.serve.auth import Caller
from grantkeeper.serve.proxy import ProxyLimits, ProxyNotConfigured, proxy_request
from grantkeeper.serve.routes_grants import PROBLEM, GrantName, broker_of, grant_access
from grantkeeper.serve.targets import ProxyTargets
from grantkeeper.serve.upstream import api_session
from grantkeeper.tokens.transport import Network

__all__ = ["METHODS", "PREFIX", "ProxyClients", "forward", "router"]

PREFIX = "/v1/proxy/"
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_PROBLEMS: dict[int | str, dict[str, Any]] = dict.fromkeys((400, 401, 403, 404, 409, 413, 429, 502, 503, 504), PROBLEM)

router = APIRouter(prefix="/v1")


class ProxyClients:
    """One keep-alive `aiohttp.ClientSession` per (network, API origin), closed with the app."""

    def __init__(self) -> None:
        self._clients: dict[tuple[Network, str], aiohttp.ClientSession] = {}
        self._origins: dict[str, tuple[str, str]] = {}  # base URL -> (origin, host): parsed once, not per request

    def _origin(self, base_url: str) -> tuple[str, str]:
        found = self._origins.get(base_url)
        if found is None:
            url = httpx.URL(base_url)
            found = self._origins[base_url] = (str(url.copy_with(path="/", query=None)), url.host)
        return found

    def for_provider(self, provider: Provider, base_url: str) -> aiohttp.ClientSession:
        key = (Network.of(provider), self._origin(base_url)[0])
        found = self._clients.get(key)
        if found is None:
            found = self._clients[key] = api_session(key[0], base_url)
        return found

    def host(self, base_url: str) -> str:
        """The host of `base_url` (for the audit detail)."""
        return self._origin(base_url)[1]

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()


def _api_base_url(name: str, provider: Provider) -> str:
    if provider.api_base_url is None:
        raise ProxyNotConfigured(
            f"grant {name!r}: provider {provider.name!r} has no API base URL, so there is nowhere to proxy to; an "
            f"operator sets it with 'grantkeeper provider add {provider.name} --api-base-url URL'",
            grant=name,
        )
    return provider.api_base_url


@router.api_route("/proxy/{name}/{path:path}", methods=METHODS, responses=_PROBLEMS)
async def proxy(
    request: Request, name: GrantName, path: str, _caller: Annotated[Caller, grant_access("proxy", "proxy")]
) -> Response:
    """Forward the request to PATH under the grant's provider API base URL, with its access token; the answer
    streams back (never the token). Scope: proxy."""
    return await forward(request, name, path)


async def forward(request: Request, name: str, path: str) -> Response:
    """The proxy route's answer once the caller is admitted (`grantkeeper.serve.fastpath` calls it too)."""
    broker = broker_of(request)
    targets: ProxyTargets = request.app.state.proxy_targets
    provider = await targets.provider(name)
    base_url = _api_base_url(name, provider)

    async def get_token() -> str:
        served = await broker.token(name)
        request.state.fingerprint = broker.served_fingerprint(name, served)
        request.state.generation = served.generation
        return checked_token(name, served.access_token.reveal())

    async def report_rejected(token: str) -> None:
        await broker.keeper.report_rejected(name, token)

    limits: ProxyLimits = request.app.state.proxy_limits
    clients: ProxyClients = request.app.state.proxy_clients
    client = clients.for_provider(provider, base_url)
    request.state.detail = f"{request.method} {clients.host(base_url)}"
    return await proxy_request(
        request, client=client, base_url=base_url, path=path,
        get_token=get_token, report_rejected=report_rejected, limits=limits,
    )  # fmt: skip
