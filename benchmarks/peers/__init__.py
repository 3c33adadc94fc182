"""The libraries compared in ``python -m benchmarks.run peers``, behind one small interface.

Each library is a `Library` (set up a store and grants in the parent, open a `Client` in any process) and
runs its own documented pattern (see each module's docstring and `Library.configured`):

* `grantkeeper_lib`: ``Keeper.access_token(name)`` / ``Keeper.refresh(name, force=True)`` on SQLite.
* `authlib_lib`: Authlib's requests ``OAuth2Session`` with ``token_endpoint`` and ``update_token`` persisting
  to an SQLite table, the token loaded from that table for every call.
* `requests_oauthlib_lib`: requests-oauthlib ``OAuth2Session`` with ``auto_refresh_url``,
  ``auto_refresh_kwargs`` and ``token_updater`` persisting to an SQLite table, the same way.
"""

from __future__ import annotations

from benchmarks.peers.base import Client, Library, SimInfo

__all__ = ["LIBRARIES", "Client", "Library", "SimInfo", "library"]

#: The order the tables list them in.
LIBRARIES = ("grantkeeper", "authlib", "requests-oauthlib")


def library(name: str, *, grantkeeper_policy: dict[str, float] | None = None) -> Library:
    """The adapter for `name` (imported lazily: a worker process loads only the library it runs).
    `grantkeeper_policy` sets `RefreshPolicy` fields for grantkeeper; the peers have no such settings."""
    if name == "grantkeeper":
        from benchmarks.peers.grantkeeper_lib import GrantkeeperLibrary

        return GrantkeeperLibrary(grantkeeper_policy)
    if name == "authlib":
        from benchmarks.peers.authlib_lib import AuthlibLibrary

        return AuthlibLibrary()
    if name == "requests-oauthlib":
        from benchmarks.peers.requests_oauthlib_lib import RequestsOAuthlibLibrary

        return RequestsOAuthlibLibrary()
    raise ValueError(f"unknown library {name!r}; known: {', '.join(LIBRARIES)}")
