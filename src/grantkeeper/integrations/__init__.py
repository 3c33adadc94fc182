"""Bridges from the HTTP clients people already use to a keeper.

Each bridge lives in its own module and imports its library only there, so ``import grantkeeper`` never
pulls in requests or Authlib:

- `grantkeeper.integrations.httpx_auth.GrantAuth`: an ``httpx.Auth`` for ``httpx.Client`` and ``httpx.AsyncClient``.
- `grantkeeper.integrations.requests_auth.RequestsGrantAuth`: a ``requests.auth.AuthBase`` (extra ``requests``).
- `grantkeeper.integrations.authlib_bridge`: ``OAuth2Session`` / ``AsyncOAuth2Client`` subclasses whose refresh
  and persistence belong to the keeper (extra ``authlib``).

All three run one sans-I/O decision flow (`grantkeeper.integrations._flow`); see docs/integrations.md.
"""

from grantkeeper.integrations._extras import MissingExtra
from grantkeeper.integrations._flow import OUTCOME_KEY, AuthOutcome

__all__ = ["OUTCOME_KEY", "AuthOutcome", "MissingExtra"]
