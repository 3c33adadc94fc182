"""requests-oauthlib as its documentation shows it ("Refreshing tokens", third option): ``OAuth2Session`` with
``auto_refresh_url``, ``auto_refresh_kwargs`` holding the client credentials, and a ``token_updater`` that
persists the new token (the docs' example saves it in the web session and builds a session per request from
the stored token): https://requests-oauthlib.readthedocs.io/en/latest/examples/real_world_example_with_refresh.html"""

from __future__ import annotations

from functools import partial
from typing import Any

import requests
from requests_oauthlib import OAuth2Session

from benchmarks.peers._peer import PeerClient, PeerLibrary
from benchmarks.peers.base import RESOURCE, bearer, null_session

__all__ = ["RequestsOAuthlibClient", "RequestsOAuthlibLibrary"]


class RequestsOAuthlibClient(PeerClient):
    def new_session(self, name: str) -> requests.Session:
        session = OAuth2Session(
            self.sim.client_id,
            auto_refresh_url=self.sim.url,
            auto_refresh_kwargs={"client_id": self.sim.client_id, "client_secret": self.sim.client_secret},
            token_updater=partial(self._token_updater, name),
        )
        return null_session(session)

    def _token_updater(self, name: str, token: dict[str, Any]) -> None:
        self.table.save(name, token)

    def token(self, name: str) -> str:
        session = self.session(name)
        session.token = self.table.load(name)
        return bearer(session.get(RESOURCE))  # request() refreshes here when the token has expired

    def refresh(self, name: str) -> None:
        session = self.session(name)
        session.token = self.table.load(name)
        # What OAuth2Session.request does on TokenExpiredError: refresh, then hand the token to token_updater.
        session.token_updater(session.refresh_token(self.sim.url))


class RequestsOAuthlibLibrary(PeerLibrary):
    name = "requests-oauthlib"
    client_class = RequestsOAuthlibClient
    configured = (
        "requests_oauthlib.OAuth2Session(client_id, token=..., auto_refresh_url=token endpoint, "
        "auto_refresh_kwargs={client_id, client_secret} (client_secret_post), token_updater=...)",
        "token_updater(token) persists to an SQLite table (WAL, synchronous=FULL) by grant name (it is not "
        "given the old token); no leeway option: it refreshes once the token has expired",
        "per call: token loaded from the table (the documented per-request pattern), then "
        "session.get(resource): request() refreshes there on TokenExpiredError; forced refresh: "
        "session.refresh_token(auto_refresh_url) (it adds auto_refresh_kwargs) then token_updater(token)",
    )
