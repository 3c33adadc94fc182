"""`RequestsGrantAuth`: a ``requests.auth.AuthBase`` that signs requests with a grant's access token.

>>> session.get(url, auth=RequestsGrantAuth(keeper, "acme-prod"))  # doctest: +SKIP

Requests has no auth flow, so the re-send happens in a response hook, the way requests' own
``HTTPDigestAuth`` answers its 401 challenge: copy the prepared request, sign it again, send it on the same
connection adapter, and chain the 401 into ``history``. The decisions are `_flow.auth_steps`.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from grantkeeper.engine import Keeper
from grantkeeper.integrations._extras import require
from grantkeeper.integrations._flow import (
    OUTCOME_KEY,
    Answer,
    AuthOutcome,
    Flow,
    SendWith,
    auth_steps,
    bearer,
    log_outcome,
    run_until_send,
    scrubbing,
    wrong_keeper,
)

require("requests", extra="requests", bridge="grantkeeper.integrations.requests_auth")

import requests  # noqa: E402 (after the check above, so a missing install gets the message naming the extra)

__all__ = ["RequestsGrantAuth"]


def _replayable(request: requests.PreparedRequest) -> bool:
    """Bytes and str bodies can be sent twice; a generator or file object has been read by the first send."""
    return request.body is None or isinstance(request.body, bytes | str)


class RequestsGrantAuth(requests.auth.AuthBase):
    """Attach grant `grant`'s access token; on a rejected token, invalidate it and re-send once.

    Takes a sync `Keeper`. Rejection and ``any_401`` work as in `GrantAuth`. The final response carries the
    `AuthOutcome` as its ``grantkeeper_auth`` attribute.
    """

    def __init__(self, keeper: Keeper, grant: str, *, any_401: bool = False) -> None:
        if not isinstance(keeper, Keeper):
            raise wrong_keeper("RequestsGrantAuth", "Keeper (requests is synchronous)")
        self.keeper = keeper
        self.grant = grant
        self.any_401 = any_401

    def __repr__(self) -> str:
        return f"RequestsGrantAuth(grant={self.grant!r}, any_401={self.any_401})"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        with scrubbing():
            return self._sign(request)

    def _sign(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        flow = auth_steps(replayable=_replayable(request), any_401=self.any_401)
        step = run_until_send(flow, None, self.keeper, self.grant)
        assert isinstance(step, SendWith)  # the flow's first step after a token is always a send
        request.headers["Authorization"] = bearer(step)
        # One hook per request, bound to its flow; the re-sent copy drops it so a second 401 is final.
        hook = functools.partial(self._on_response, flow)
        request.hooks.setdefault("response", []).append(hook)
        return request

    def _on_response(self, flow: Flow, response: requests.Response, **send_options: Any) -> requests.Response:
        if inspect.getgeneratorstate(flow) == inspect.GEN_CLOSED:
            # requests copies hooks onto redirected requests; this flow already ended with the first response.
            return response
        answer = Answer.of(response.status_code, _challenges(response))
        try:
            with scrubbing():
                step = run_until_send(flow, answer, self.keeper, self.grant)
                while not isinstance(step, AuthOutcome):
                    response = self._resend(response, step, send_options)
                    step = run_until_send(flow, Answer.of(response.status_code, _challenges(response)), self.keeper,
                                          self.grant)  # fmt: skip
        finally:
            flow.close()
        setattr(response, OUTCOME_KEY, step)
        log_outcome(self.grant, step, str(response.request.method), str(response.request.url))
        return response

    @staticmethod
    def _resend(rejected: requests.Response, step: SendWith, send_options: dict[str, Any]) -> requests.Response:
        rejected.content  # noqa: B018 (drain the 401 so its connection goes back to the pool)
        rejected.close()
        again = rejected.request.copy()
        again.hooks["response"] = []  # the flow that owns this exchange ends with the answer to `again`
        again.headers["Authorization"] = bearer(step)
        adapter = rejected.connection
        response: requests.Response = adapter.send(again, **send_options)
        response.history.append(rejected)
        response.request = again
        return response


def _challenges(response: requests.Response) -> list[str]:
    # requests folds repeated headers into one comma-separated value; the challenge regex copes with that.
    value = response.headers.get("WWW-Authenticate")
    return [value] if value else []
