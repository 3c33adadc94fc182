"""`GrantAuth`: an ``httpx.Auth`` that signs requests with a grant's access token from a keeper.

>>> client = httpx.Client(auth=GrantAuth(keeper, "acme-prod"))  # doctest: +SKIP
>>> client.get("https://api.acme.example/v1/things")  # doctest: +SKIP

The decisions are `grantkeeper.integrations._flow.auth_steps`; this module only drives them. httpx's own
advice applies: an auth that does I/O or takes locks overrides ``sync_auth_flow`` / ``async_auth_flow``
instead of ``auth_flow``, because fetching a token may refresh the grant.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator

import httpx

from grantkeeper.engine import AsyncKeeper, Keeper
from grantkeeper.integrations._flow import (
    OUTCOME_KEY,
    Answer,
    AuthOutcome,
    Steps,
    akeeper_driven,
    auth_steps,
    keeper_as,
    keeper_driven,
    log_outcome,
    signed,
)

__all__ = ["GrantAuth"]


def _replayable(request: httpx.Request) -> bool:
    """A request whose body httpx holds in memory can be sent twice; a generator or file stream cannot."""
    try:
        request.content  # noqa: B018 (the property raises RequestNotRead for a stream)
    except httpx.RequestNotRead:
        return False
    return True


def _answer(response: httpx.Response) -> Answer:
    return Answer.of(response.status_code, response.headers.get_list("www-authenticate"))


class GrantAuth(httpx.Auth):
    """Attach grant `grant`'s access token; on a rejected token, invalidate it and re-send once.

    Use a `Keeper` with ``httpx.Client`` and an `AsyncKeeper` with ``httpx.AsyncClient``. A rejection is a 401
    whose ``WWW-Authenticate`` carries ``error="invalid_token"`` (RFC 6750 §3.1), or any 401 with
    ``any_401=True`` (for APIs that send no challenge). The final response carries the `AuthOutcome` in
    ``response.extensions["grantkeeper_auth"]``.
    """

    def __init__(self, keeper: Keeper | AsyncKeeper, grant: str, *, any_401: bool = False) -> None:
        self.keeper = keeper
        self.grant = grant
        self.any_401 = any_401

    def __repr__(self) -> str:
        return f"GrantAuth(grant={self.grant!r}, any_401={self.any_401})"

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        keeper = keeper_as(self.keeper, Keeper, "GrantAuth with httpx.Client")
        return keeper_driven(self._steps(request), keeper, self.grant)

    def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        keeper = keeper_as(self.keeper, AsyncKeeper, "GrantAuth with httpx.AsyncClient")
        return akeeper_driven(self._steps(request), keeper, self.grant)

    def _steps(self, request: httpx.Request) -> Steps[httpx.Request]:
        """This grant's flow for `request` in httpx's terms; both faces drive it. Every send re-signs the same
        request object, as httpx's own ``DigestAuth`` does, and httpx keeps the rejected answer in ``history``."""

        def sign(authorization: str, _rejected: httpx.Response | None) -> httpx.Request:
            request.headers["Authorization"] = authorization
            return request

        def finish(outcome: AuthOutcome, response: httpx.Response | None) -> None:
            if response is not None:
                response.extensions[OUTCOME_KEY] = outcome
            log_outcome(self.grant, outcome, request.method, str(request.url))

        return signed(auth_steps(replayable=_replayable(request), any_401=self.any_401), sign, _answer, finish)
