"""Keep Authlib call sites; let the keeper own refresh and persistence.

`KeeperOAuth2Session` is an Authlib ``OAuth2Session`` (requests) and `KeeperAsyncOAuth2Client` an Authlib
``AsyncOAuth2Client`` (httpx) whose tokens come from a keeper. Code that calls ``session.get(...)``,
``client.request(...)``, ``ensure_active_token()`` or ``refresh_token()`` keeps working; only the constructor
changes (a keeper and a grant name instead of ``token=`` and ``update_token=``).

Why not an ``update_token`` callback: Authlib calls it *after* it has spent the refresh token, from whichever
client object noticed the expiry, with no lock across processes (and, for the sync session, none across
threads). Two workers holding the same refresh token both spend it; with rotation and reuse detection the
second one kills the grant. Here the keeper decides when to refresh, under its per-grant lock and store lease.
The exact list of changed behaviour is in docs/integrations.md.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, ClassVar, Generic, TypeVar

import httpx

from grantkeeper._exceptions import ConfigurationError
from grantkeeper.engine import AsyncKeeper, Keeper
from grantkeeper.integrations._extras import require
from grantkeeper.integrations._flow import checked_token, keeper_as
from grantkeeper.integrations.httpx_auth import GrantAuth

_deprecate = require("authlib.deprecate", extra="authlib", bridge="grantkeeper.integrations.authlib_bridge")
require("requests", extra="authlib", bridge="grantkeeper.integrations.authlib_bridge")

# Recent Authlib (1.9 tested) prefers the httpx2 package and falls back to httpx with a deprecation warning.
# We drive httpx (the keeper's own client library), so that fallback is the path we want; the warning is not
# news for our users to act on.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", _deprecate.AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client  # type: ignore[import-untyped]
from authlib.integrations.requests_client import OAuth2Session  # type: ignore[import-untyped]  # noqa: E402
from authlib.oauth2.rfc6749 import OAuth2Token  # type: ignore[import-untyped]  # noqa: E402

from grantkeeper.integrations.requests_auth import RequestsGrantAuth  # noqa: E402

__all__ = ["KeeperAsyncOAuth2Client", "KeeperOAuth2Session"]

#: Constructor arguments that hand token ownership to Authlib; the bridge refuses them instead of ignoring them.
_OWNED_BY_KEEPER = ("token", "update_token", "token_placement")

_Keeper = TypeVar("_Keeper", Keeper, AsyncKeeper)


def _no_fetch() -> ConfigurationError:
    return ConfigurationError(
        "fetch_token is not bridged: run the consent exchange with a plain Authlib client, then hand the "
        "refresh token to the keeper once (Keeper.import_grant or 'grantkeeper grant import')"
    )


class _KeeperOwned(Generic[_Keeper]):
    """What both Authlib faces share: the keeper owns the grant's tokens, our `GrantAuth` or
    `RequestsGrantAuth` signs every request, and Authlib only ever sees a snapshot of the access token.
    A face adds the calls that differ in ``await`` alone."""

    _keeper_type: ClassVar[type]  # the kind of keeper this face drives
    _signer_type: ClassVar[Callable[..., object]]  # the bridge that signs its requests
    keeper: _Keeper
    grant: str
    token_auth: Any  # Authlib's
    token: Any  # Authlib's

    def __init__(self, keeper: _Keeper, grant: str, *, any_401: bool = False, **options: Any) -> None:
        # Authlib's __del__ expects a constructed object, so its constructor runs before our checks can refuse.
        super().__init__(**{k: v for k, v in options.items() if k not in _OWNED_BY_KEEPER})
        keeper_as(keeper, self._keeper_type, type(self).__name__)
        given = sorted(k for k in _OWNED_BY_KEEPER if k in options)
        if given:
            raise ConfigurationError(
                f"the keeper owns the grant's tokens; remove {', '.join(given)} from the Authlib constructor "
                "(the bridge always sends the access token in the Authorization header)"
            )
        self.keeper = keeper
        self.grant = grant
        self._grant_auth = self._signer_type(keeper, grant, any_401=any_401)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(grant={self.grant!r})"

    def _signed(self, withhold_token: bool, auth: Any, options: dict[str, Any]) -> dict[str, Any]:
        """Options for Authlib's request/stream: our auth unless the caller chose one or withheld the token, and
        always ``withhold_token=True`` so Authlib does not check or refresh its own token copy."""
        if (auth is None or auth is httpx.USE_CLIENT_DEFAULT) and not withhold_token:  # httpx's get() passes the latter
            auth = self._grant_auth
        return {**options, "withhold_token": True, **({} if auth is None else {"auth": auth})}

    def _remember(self, access_token: str) -> Any:
        # Only what a caller may see: never the refresh token (it lives in the store, read inside the lease).
        # Authlib may put this token into a header itself, so it passes the same check as the bridges' own headers.
        checked = checked_token(self.grant, access_token)
        self.token_auth.set_token(OAuth2Token({"access_token": checked, "token_type": "Bearer"}))
        return self.token


class KeeperOAuth2Session(_KeeperOwned[Keeper], OAuth2Session):  # type: ignore[misc]
    """``OAuth2Session`` whose access tokens, refreshes and persistence belong to a sync `Keeper`.

    Args:
        keeper: the keeper holding grant `grant`.
        grant: the grant's name in the keeper's store.
        any_401: re-send once after any 401, not only after ``error="invalid_token"``.
        **options: the usual ``OAuth2Session`` options (``client_id``, ``scope``, ``default_timeout``, ...)
            except ``token``, ``update_token`` and ``token_placement``.
    """

    _keeper_type = Keeper
    _signer_type = RequestsGrantAuth

    def request(self, method: str, url: str, withhold_token: bool = False, auth: Any = None, **kwargs: Any) -> Any:
        """Send a request signed by the keeper's token (Authlib's own expiry check is bypassed)."""
        return super().request(method, url, **self._signed(withhold_token, auth, kwargs))

    def ensure_active_token(self, token: Any = None) -> bool:
        """Make sure the grant has a usable access token: the keeper refreshes once for all workers if needed."""
        self._remember(self.keeper.access_token(self.grant))
        return True

    def refresh_token(self, url: Any = None, refresh_token: Any = None, **kwargs: Any) -> Any:
        """Refresh now through the keeper (arguments are ignored: the keeper uses its stored refresh token and
        the provider's token URL). Returns the new token snapshot."""
        self.keeper.refresh(self.grant, force=True)
        return self._remember(self.keeper.access_token(self.grant))

    def fetch_token(self, *args: Any, **kwargs: Any) -> Any:
        raise _no_fetch()


class KeeperAsyncOAuth2Client(_KeeperOwned[AsyncKeeper], AsyncOAuth2Client):  # type: ignore[misc]
    """``AsyncOAuth2Client`` whose access tokens, refreshes and persistence belong to an `AsyncKeeper`.

    Arguments as for `KeeperOAuth2Session`; ``**options`` are the usual ``AsyncOAuth2Client`` options.
    Clients may be created per request (the lock is the keeper's, per grant, not the client's).
    """

    _keeper_type = AsyncKeeper
    _signer_type = GrantAuth

    async def request(self, method: str, url: Any, withhold_token: bool = False, auth: Any = None,
                      **kwargs: Any) -> Any:  # fmt: skip
        """Send a request signed by the keeper's token (Authlib's own expiry check and lock are bypassed)."""
        return await super().request(method, url, **self._signed(withhold_token, auth, kwargs))

    @asynccontextmanager
    async def stream(self, method: str, url: Any, withhold_token: bool = False, auth: Any = None,
                     **kwargs: Any) -> AsyncIterator[Any]:  # fmt: skip
        async with super().stream(method, url, **self._signed(withhold_token, auth, kwargs)) as response:
            yield response

    async def ensure_active_token(self, token: Any = None) -> bool:
        self._remember(await self.keeper.access_token(self.grant))
        return True

    async def refresh_token(self, url: Any = None, refresh_token: Any = None, **kwargs: Any) -> Any:
        await self.keeper.refresh(self.grant, force=True)
        return self._remember(await self.keeper.access_token(self.grant))

    async def fetch_token(self, *args: Any, **kwargs: Any) -> Any:
        raise _no_fetch()
