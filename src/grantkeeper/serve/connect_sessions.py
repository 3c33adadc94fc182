"""Hosted connect: an end user connects a grant in their own browser, on a one-time URL the broker hands out.

1. `HostedConnect.create` (``POST /v1/connect-sessions``, scope ``connect``): checks the grant name against the
   key's patterns, the provider and that the grant does not exist (unless ``replace``), stores a session and
   returns its URL, ``<public URL>/connect?token=gkc_<id>_<secret>``, valid `ConnectSettings.ttl` seconds.
2. `HostedConnect.open` (``GET /connect``): marks the session opened, once; sets a cookie that binds the session
   to this browser; sends the browser to the provider's authorization endpoint with PKCE (S256) and ``state``.
3. `HostedConnect.callback` (``GET /oauth/callback`` on the public URL): finds the session by ``state``, requires
   the cookie, takes the session's one callback, then exchanges the code and stores the grant with the functions
   ``grantkeeper connect`` uses (`grantkeeper.consent`: one code exchange, one way a consent is stored). A
   ``connected`` or ``connect_failed`` event goes to the webhook.

Sessions live in the store (table ``connect_sessions``), not sealed into the URL or a cookie: a URL must work
once only on whichever instance of the broker receives it, and only a record every instance reads can say that.
The verifier is sealed with the store's key as tokens are; the URL's secret, the ``state`` and the cookie are
kept as keyed hashes, so the store alone opens no session. The URL's secret rides in the query string, which the
request log never writes; the code and the verifier appear in no page, log line or header of ours.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from dataclasses import dataclass

from grantkeeper._exceptions import GrantkeeperError
from grantkeeper.consent import authorization, consented, exchange_code, prepare
from grantkeeper.consent.flow import AuthorizationRequest, code_from_redirect
from grantkeeper.notify import GrantEvent
from grantkeeper.serve.broker import Broker
from grantkeeper.serve.config import DEFAULT_CONNECT_TTL
from grantkeeper.stores.access import ConnectSession

__all__ = [
    "CALLBACK_PATH",
    "OPEN_PATH",
    "ConnectBrowserMismatch",
    "ConnectError",
    "ConnectGrantExists",
    "ConnectNotConfigured",
    "ConnectSessionExpired",
    "ConnectSessionUnknown",
    "ConnectSessionUsed",
    "ConnectSettings",
    "ConnectStateInvalid",
    "Connected",
    "HostedConnect",
    "Opened",
    "cookie_name",
]

OPEN_PATH = "/connect"
CALLBACK_PATH = "/oauth/callback"
_TOKEN = re.compile(r"gkc_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_STATE = re.compile(r"([0-9a-f]{16})\.([A-Za-z0-9_-]{32})")
_COOKIE = "gk_connect_"


class ConnectError(GrantkeeperError, code="connect_error"):
    """Hosted connect refused a request; the message says why and what to do."""


class ConnectGrantExists(ConnectError, code="connect_grant_exists"):
    """The grant exists (or was created while the session waited) and replacing it was not asked for."""


class ConnectNotConfigured(ConnectError, code="connect_not_configured"):
    """Hosted connect is off: the broker has no public URL."""


class ConnectSessionUnknown(ConnectError, code="connect_session_unknown"):
    """The connect link is incomplete, was changed, or was never issued here."""


class ConnectSessionUsed(ConnectError, code="connect_session_used"):
    """The link, or the provider's answer, was already used: each works once."""


class ConnectSessionExpired(ConnectError, code="connect_session_expired"):
    """The link, or the consent it started, outlived `ConnectSettings.ttl`."""


class ConnectStateInvalid(ConnectError, code="connect_state_invalid"):
    """The provider's answer names no connect session here (its ``state`` is missing, changed or unknown)."""


class ConnectBrowserMismatch(ConnectError, code="connect_browser_mismatch"):
    """The provider's answer reached a browser that did not open the connect link."""


@dataclass(frozen=True, slots=True)
class ConnectSettings:
    """`public_url`: where end users' browsers reach the broker (None: hosted connect is off); `ttl`: seconds a
    URL may wait to be opened, and then again for the provider's redirect to come back."""

    public_url: str | None = None
    ttl: float = DEFAULT_CONNECT_TTL

    @property
    def redirect_uri(self) -> str:
        return self._base() + CALLBACK_PATH

    @property
    def secure(self) -> bool:
        return self._base().startswith("https://")

    def _base(self) -> str:
        if self.public_url is None:
            raise ConnectNotConfigured(
                "hosted connect is off: this broker has no public URL, so providers would have nowhere to send the "
                "user back. Start it with --public-url https://<where browsers reach it> (or [connect] public_url "
                "in grantkeeper.toml, or $GRANTKEEPER_SERVE_PUBLIC_URL) and allow <public URL>/oauth/callback as a "
                "redirect URI at the provider"
            )
        return self.public_url


@dataclass(frozen=True, slots=True)
class Opened:
    """Where to send the browser, and the cookie that binds the session to it."""

    session: ConnectSession
    location: str
    cookie: str
    cookie_value: str


@dataclass(frozen=True, slots=True)
class Connected:
    session: ConnectSession
    refresh_fp: str | None
    generation: int


def cookie_name(session_id: str) -> str:
    """One cookie per session, so one browser can run several connects at once (two tabs, two providers)."""
    return _COOKIE + session_id


class HostedConnect:
    """The three steps (module docstring) over one broker's keeper and store."""

    def __init__(self, broker: Broker, settings: ConnectSettings) -> None:
        self.broker, self.settings = broker, settings

    # ------------------------------------------------------------------ 1. create

    async def create(
        self, *, grant: str, provider: str, scopes: tuple[str, ...], replace: bool, api_key: str
    ) -> tuple[ConnectSession, str]:
        """A new session and its URL. The caller has checked the key's scope and grant patterns."""
        redirect_uri = self.settings.redirect_uri  # no public URL: refused before anything is stored
        store, now = self.broker.store, self.broker.keeper.clock.now()
        chosen, existed = await asyncio.to_thread(prepare, store, grant, provider, True)
        if existed and not replace:
            raise ConnectGrantExists(
                f"grant {grant!r} already exists; send \"replace\": true to replace it with the new consent (its "
                "current refresh token is then dropped), or choose another name", grant=grant,
            )  # fmt: skip
        # Refuses a provider without an authorization endpoint now, and gives the scopes the consent asks for.
        request = authorization(chosen, redirect_uri, scopes=scopes)
        session_id = secrets.token_hex(8)
        token = f"gkc_{session_id}_{secrets.token_urlsafe(32)}"
        session = ConnectSession(id=session_id, grant=grant, provider=chosen.name, scopes=request.scopes,
                                 replace=replace, api_key=api_key, created_at=now,
                                 expires_at=now + self.settings.ttl)  # fmt: skip
        await asyncio.to_thread(store.create_connect_session, session, token=token)
        return session, f"{self.settings.public_url}{OPEN_PATH}?token={token}"

    # ------------------------------------------------------------------ 2. open

    async def preview(self, token: str | None) -> ConnectSession:
        """The session of `token`, still to be opened (``GET /connect`` shows it with a button; opening the link
        changes nothing, so a mail scanner or a chat preview that fetches it does not spend it)."""
        session_id, token = self._parse(token)
        session = await asyncio.to_thread(self.broker.store.get_connect_session, session_id, token=token)
        if session is None:
            raise _unknown_link()
        if session.opened_at is not None:
            raise _used_link(session)
        if session.expires_at <= self.broker.keeper.clock.now():
            raise self._expired_link(session)
        return session

    async def open(self, token: str | None) -> Opened:
        """Mark the session of `token` opened, once, and make its authorization request (PKCE S256, ``state``)."""
        session_id, token = self._parse(token)
        store, keeper = self.broker.store, self.broker.keeper
        session = await asyncio.to_thread(store.get_connect_session, session_id, token=token)
        if session is None:
            raise _unknown_link()
        provider = await asyncio.to_thread(store.get_provider, session.provider)
        # The state names its session, so the callback finds it; the random part is what makes it unguessable.
        state = f"{session_id}.{secrets.token_urlsafe(24)}"
        request = authorization(provider, self.settings.redirect_uri, scopes=session.scopes, state=state)
        browser = secrets.token_urlsafe(32)
        now = keeper.clock.now()
        opened, why = await asyncio.to_thread(
            store.open_connect_session, session_id, token=token, state=state, browser=browser,
            verifier=request.verifier, redirect_uri=request.redirect_uri, now=now, callback_by=now + self.settings.ttl,
        )  # fmt: skip
        if why == "used":
            raise _used_link(session)
        if why == "expired":
            raise self._expired_link(session)
        if opened is None:
            raise _unknown_link()
        return Opened(opened, request.url, cookie_name(session_id), browser)

    @staticmethod
    def _parse(token: str | None) -> tuple[str, str]:
        match = _TOKEN.fullmatch(token or "")
        if match is None:
            raise _unknown_link()
        return match.group(1), match.group(0)

    def _expired_link(self, session: ConnectSession) -> ConnectSessionExpired:
        return ConnectSessionExpired(
            f"this connect link for grant {session.grant!r} has expired (links are valid {self.settings.ttl:g} s). "
            "Ask for a new one", grant=session.grant,
        )  # fmt: skip

    # ------------------------------------------------------------------ 3. callback

    async def callback(self, query: dict[str, list[str]], cookies: dict[str, str]) -> Connected:
        """Take the session's one callback, exchange the code and store the grant; every outcome after the
        session is found sends an event. The query's ``state`` names the session; its cookie must be here."""
        states = query.get("state") or []
        match = _STATE.fullmatch(states[0]) if len(states) == 1 else None
        if match is None:
            raise _bad_state()
        session_id, state = match.group(1), match.group(0)
        keeper, store = self.broker.keeper, self.broker.store
        now = keeper.clock.now()
        session, verifier, why = await asyncio.to_thread(
            store.take_connect_callback, session_id, state=state, browser=cookies.get(cookie_name(session_id)),
            now=now,
        )  # fmt: skip
        if session is None:
            raise _bad_state()
        if why == "other_browser":
            raise ConnectBrowserMismatch(
                f"this answer for grant {session.grant!r} reached a browser that did not open its connect link "
                "(or its cookie was removed); nothing was stored. Open the connect link again in one browser",
                grant=session.grant,
            )  # fmt: skip
        if why == "used":
            raise ConnectSessionUsed(
                f"the provider's answer for grant {session.grant!r} was already used; nothing more was stored. Ask "
                "for a new link to connect again", grant=session.grant,
            )  # fmt: skip
        if why == "expired":
            error = ConnectSessionExpired(
                f"the provider's answer for grant {session.grant!r} came after the session expired (it allows "
                f"{self.settings.ttl:g} s for the consent); nothing was stored. Ask for a new link",
                grant=session.grant,
            )  # fmt: skip
            await self._announce(session, error)
            raise error
        assert verifier is not None
        assert session.redirect_uri is not None
        request = AuthorizationRequest(session.provider, "", session.redirect_uri, state, verifier, session.scopes)
        try:
            code = code_from_redirect(request, query)
            provider, existed = await asyncio.to_thread(prepare, store, session.grant, session.provider, True)
            if existed and not session.replace:
                raise ConnectGrantExists(
                    f"grant {session.grant!r} was created by someone else while this session waited; this consent "
                    "was not used and nothing was stored. Ask for a new link (with replace to replace it)",
                    grant=session.grant,
                )  # fmt: skip
            tokens, sent_at = await asyncio.to_thread(exchange_code, provider, request, code, now=keeper.clock.now)
            grant = await keeper._import(
                session.grant, **consented(provider, tokens, sent_at=sent_at, requested=session.scopes)
            )
        except GrantkeeperError as error:
            await asyncio.to_thread(store.finish_connect_session, session_id, outcome=error.code)
            await self._announce(session, error)
            raise
        await asyncio.to_thread(store.finish_connect_session, session_id, outcome="connected")
        await self._announce(session, None, refresh_fp=grant.refresh_fp)
        return Connected(session, grant.refresh_fp, grant.generation)

    async def _announce(self, session: ConnectSession, error: GrantkeeperError | None, *,
                        refresh_fp: str | None = None) -> None:  # fmt: skip
        keeper = self.broker.keeper
        evidence: dict[str, object] = {"session": session.id, "api_key": session.api_key,
                                       "scopes": list(session.scopes)}  # fmt: skip
        if error is None:
            kind, cause = "connected", "connected"
            message = f"grant {session.grant!r} was connected by hosted connect session {session.id}"
            evidence["refresh_fp"] = refresh_fp
        else:
            kind, cause, message = "connect_failed", error.code, error.message
            evidence.update(error.evidence())
        event = GrantEvent(kind=kind, grant=session.grant, provider=session.provider, cause=cause, message=message,
                           evidence=evidence, at=keeper.clock.now(), worker=keeper.worker)  # fmt: skip
        await asyncio.to_thread(keeper.announce, event)


def _used_link(session: ConnectSession) -> ConnectSessionUsed:
    return ConnectSessionUsed(
        f"this connect link for grant {session.grant!r} was already used; a link works once only. Ask for a new "
        "one", grant=session.grant,
    )  # fmt: skip


def _unknown_link() -> ConnectSessionUnknown:
    return ConnectSessionUnknown(
        "this connect link is not valid: it is incomplete, was changed, or was never issued by this service. Open "
        "the link exactly as you received it, or ask for a new one"
    )


def _bad_state() -> ConnectStateInvalid:
    return ConnectStateInvalid(
        "the provider's answer does not belong to any connect session here (its state is missing, changed or "
        "unknown); nothing was stored. Open your connect link again"
    )
