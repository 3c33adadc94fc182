"""Authlib as its documentation shows it: ``authlib.integrations.requests_client.OAuth2Session`` with
``token_endpoint`` (so it refreshes by itself when a request finds the token expired) and an ``update_token``
callback that persists the new token, finding the row by the old refresh token as the docs' example does
(``item = OAuth2Token.find(name=name, refresh_token=refresh_token)``).

Docs: https://docs.authlib.org/en/latest/client/oauth2.html ("Auto Update Token"), and the framework clients'
``fetch_token`` / ``update_token`` (the token is loaded from storage for each request)."""

from __future__ import annotations

from functools import partial
from typing import Any

import requests
from authlib.integrations.requests_client import OAuth2Session

from benchmarks.peers._peer import PeerClient, PeerLibrary
from benchmarks.peers.base import RESOURCE, bearer, null_session

__all__ = ["AuthlibClient", "AuthlibLibrary"]

#: Authlib refreshes `leeway` seconds before expiry (default 60). The scenarios use 1-second tokens, and
#: Authlib truncates expires_at to whole seconds already, so no extra lead: 0.
LEEWAY = 0


class AuthlibClient(PeerClient):
    def new_session(self, name: str) -> requests.Session:
        session = OAuth2Session(
            self.sim.client_id,
            self.sim.client_secret,
            token_endpoint=self.sim.url,
            token_endpoint_auth_method="client_secret_basic",
            update_token=partial(self._update_token, name),
            leeway=LEEWAY,
        )
        return null_session(session)

    def _update_token(
        self, name: str, token: dict[str, Any], refresh_token: str | None = None, access_token: str | None = None
    ) -> None:
        self.table.save(name, token, replacing=refresh_token)

    def token(self, name: str) -> str:
        session = self.session(name)
        session.token = self.table.load(name)
        return bearer(session.get(RESOURCE))  # OAuth2Auth refreshes here when the token is expired

    def refresh(self, name: str) -> None:
        session = self.session(name)
        session.token = self.table.load(name)
        session.refresh_token(self.sim.url)  # calls update_token, as the automatic refresh does


class AuthlibLibrary(PeerLibrary):
    name = "authlib"
    client_class = AuthlibClient
    configured = (
        "authlib.integrations.requests_client.OAuth2Session(client_id, client_secret, token_endpoint=..., "
        "token_endpoint_auth_method='client_secret_basic', update_token=..., leeway=0)",
        "update_token(token, refresh_token=old) persists to an SQLite table (WAL, synchronous=FULL), updating "
        "the row that holds the old refresh token (the documented lookup)",
        "per call: token loaded from the table (the documented per-request fetch_token pattern), then "
        "session.get(resource): Authlib refreshes there when the token has expired; forced refresh: "
        "session.refresh_token(token_endpoint)",
    )
