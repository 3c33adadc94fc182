"""`RequestsGrantAuth`: a ``requests.auth.AuthBase`` that signs requests with a grant's access token.

>>> session.get(url, auth=RequestsGrantAuth(keeper, "acme-prod"))  # doctest: +SKIP

Requests has no auth flow, so the re-send happens in a response hook, the way requests' own
``HTTPDigestAuth`` answers its 401 challenge: copy the prepared request, sign it again, send it on the same
connection adapter, and chain the 401 into ``history``. The decisions are `_flow.auth_steps`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Generator
from typing import Any

from grantkeeper.engine import Keeper
from grantkeeper.integrations._extras import require
from grantkeeper.integrations._flow import (
    OUTCOME_KEY,
    Answer,
    AuthOutcome,
    Steps,
    advance,
    auth_steps,
    keeper_as,
    keeper_driven,
    log_outcome,
    scrubbing,
    signed,
)

require("requests", extra="requests", bridge="grantkeeper.integrations.requests_auth")

import requests  # noqa: E402 (after the check above, so a missing install gets the message naming the extra)

__all__ = ["RequestsGrantAuth"]

_Exchange = Generator[requests.PreparedRequest, requests.Response, None]


def _replayable(request: requests.PreparedRequest) -> bool:
    """Bytes and str bodies can be sent twice; a generator or file object has been read by the first send."""
    return request.body is None or isinstance(request.body, bytes | str)


class RequestsGrantAuth(requests.auth.AuthBase):
    """Attach grant `grant`'s access token; on a rejected token, invalidate it and re-send once.

    Takes a sync `Keeper`. Rejection and ``any_401`` work as in `GrantAuth`. The final response carries the
    `AuthOutcome` as its ``grantkeeper_auth`` attribute.
    """

    def __init__(self, keeper: Keeper, grant: str, *, any_401: bool = False) -> None:
        self.keeper = keeper_as(keeper, Keeper, "RequestsGrantAuth", " (requests is synchronous)")
        self.grant = grant
        self.any_401 = any_401

    def __repr__(self) -> str:
        return f"RequestsGrantAuth(grant={self.grant!r}, any_401={self.any_401})"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        exchange = keeper_driven(self._steps(request), self.keeper, self.grant)
        with scrubbing():
            first = next(exchange)  # `request` itself, signed: the flow's first step after a token is a send
        # One hook per request, bound to its exchange; the re-sent copy drops it so a second 401 is final.
        first.hooks.setdefault("response", []).append(functools.partial(self._on_response, exchange))
        return first

    def _steps(self, request: requests.PreparedRequest) -> Steps[requests.PreparedRequest]:
        """This grant's flow for `request` in requests' terms: the first send signs `request` itself, a re-send
        signs a copy of the rejected request that carries no hook (the exchange ends with the answer to it)."""

        def sign(authorization: str, rejected: requests.Response | None) -> requests.PreparedRequest:
            outgoing = request if rejected is None else rejected.request.copy()
            if rejected is not None:
                outgoing.hooks["response"] = []
            outgoing.headers["Authorization"] = authorization
            return outgoing

        def finish(outcome: AuthOutcome, response: requests.Response | None) -> None:
            assert response is not None  # the flow always sends before it ends
            setattr(response, OUTCOME_KEY, outcome)
            log_outcome(self.grant, outcome, str(response.request.method), str(response.request.url))

        return signed(auth_steps(replayable=_replayable(request), any_401=self.any_401), sign, _answer, finish)

    @staticmethod
    def _on_response(exchange: _Exchange, response: requests.Response, **send_options: Any) -> requests.Response:
        if inspect.getgeneratorstate(exchange) == inspect.GEN_CLOSED:
            # requests copies hooks onto redirected requests; this exchange already ended with the first response.
            return response
        with scrubbing(), contextlib.closing(exchange):
            while (again := advance(exchange, response)) is not None:
                response = _resend(response, again, send_options)
        return response


def _resend(rejected: requests.Response, again: requests.PreparedRequest, options: dict[str, Any]) -> requests.Response:
    rejected.content  # noqa: B018 (drain the 401 so its connection goes back to the pool)
    rejected.close()
    response: requests.Response = rejected.connection.send(again, **options)
    response.history.append(rejected)
    response.request = again
    return response


def _answer(response: requests.Response) -> Answer:
    # requests folds repeated headers into one comma-separated value; the challenge regex copes with that.
    value = response.headers.get("WWW-Authenticate")
    return Answer.of(response.status_code, [value] if value else [])
