"""The hosted connect routes: ``POST /v1/connect-sessions`` for the platform, and the end user's pages.

``GET /connect?token=...`` shows what is about to happen with a button (a page that changes nothing, so a link
previewer does not spend the one-time link); pressing it (``POST /connect``) opens the session and sends the
browser to the provider; the provider sends it back to ``GET /oauth/callback``, which shows the result. The steps
themselves are `grantkeeper.serve.connect_sessions.HostedConnect`'s; this module renders them.

Every page carries `PAGE_HEADERS`: a Content-Security-Policy with no inline script or style and
``frame-ancestors 'none'`` (plus X-Frame-Options for old browsers), ``no-store`` and ``no-referrer`` (the callback's
URL holds the authorization code: no request a page makes may carry it in a Referer).
"""

from __future__ import annotations

import asyncio
import time
from importlib import resources
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from grantkeeper._exceptions import (
    ConfigurationError,
    ConsentDenied,
    GrantkeeperError,
    TransientError,
    UnknownProvider,
)
from grantkeeper.model import check_name
from grantkeeper.serve.auth import Caller
from grantkeeper.serve.connect_sessions import (
    CALLBACK_PATH,
    OPEN_PATH,
    ConnectError,
    ConnectSettings,
    HostedConnect,
    cookie_name,
)
from grantkeeper.serve.errors import ServeError, status_for
from grantkeeper.serve.routes_grants import AUTH_PROBLEMS, PROBLEM, access, broker_of

__all__ = ["PAGE_HEADERS", "ConnectSessionRequest", "ConnectSessionResponse", "router"]

STYLESHEET = OPEN_PATH + "/connect.css"
_CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action {forms}; "
        "frame-ancestors 'none'")  # fmt: skip
PAGE_HEADERS = {
    "Content-Security-Policy": _CSP.format(forms="'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("grantkeeper.serve", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
)
_CSS = resources.files("grantkeeper.serve").joinpath("templates/connect/connect.css").read_bytes()
_DENIED = "You declined the request at the provider, so nothing was connected. Ask for a new link to try again."
_BUSY = "The service could not take your request just now; nothing was used up. Open the link again in a minute."
_FAILED = "The connection could not be completed. Ask for a new link to try again."

router = APIRouter()


class ConnectSessionRequest(BaseModel):
    grant: str = Field(min_length=1, max_length=200, description="The name the new grant is stored under.")
    provider: str = Field(min_length=1, max_length=200, description="The provider to consent at.")
    scopes: list[Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[!#-\[\]-~]+$")]] = Field(
        default_factory=list, max_length=50, description="Scopes to request [default: the provider profile's]."
    )
    replace: bool = Field(False, description="Replace grant GRANT if it exists (its refresh token is dropped).")


class ConnectSessionResponse(BaseModel):
    id: str = Field(description="The session's id, as webhook events name it.")
    url: str = Field(description="The one-time URL to give the end user.")
    expires_at: float = Field(description="When the URL stops working unopened (epoch seconds).")


def hosted(request: Request) -> HostedConnect:
    found: HostedConnect = request.app.state.hosted_connect
    return found


@router.post("/v1/connect-sessions", status_code=201, response_model=ConnectSessionResponse,
             responses=AUTH_PROBLEMS | {404: PROBLEM, 409: PROBLEM, 422: PROBLEM})  # fmt: skip
async def post_connect_session(request: Request, body: ConnectSessionRequest,
                               caller: Annotated[Caller, access("connect")]) -> JSONResponse:  # fmt: skip
    """A one-time URL at which an end user connects grant GRANT at PROVIDER in their browser (hosted connect,
    docs/connect.md). Scope: connect, and the key's grant patterns must match GRANT."""
    request.state.grant, request.state.action = body.grant, "connect"
    broker_of(request).auth.check(caller, "connect", body.grant)
    try:
        check_name(body.grant, "grant")
    except ConfigurationError as exc:
        raise ServeError(422, "invalid_request", exc.message) from None
    try:
        session, url = await hosted(request).create(grant=body.grant, provider=body.provider, replace=body.replace,
                                                    scopes=tuple(body.scopes), api_key=caller.name)  # fmt: skip
    except UnknownProvider as exc:
        raise ServeError(404, exc.code, exc.message) from None
    except ConnectError:
        raise
    except ConfigurationError as exc:  # the provider cannot run the flow (no authorization endpoint)
        raise ServeError(409, "connect_refused", exc.message) from None
    request.state.detail = f"session {session.id}"
    answer = {"id": session.id, "url": url, "expires_at": session.expires_at}
    return JSONResponse(answer, status_code=201, headers={"Cache-Control": "no-store"})


@router.get(STYLESHEET, include_in_schema=False)
async def get_stylesheet() -> Response:
    return Response(_CSS, media_type="text/css", headers={**PAGE_HEADERS, "Cache-Control": "public, max-age=3600"})


@router.get(OPEN_PATH, include_in_schema=False)
async def get_connect(request: Request, token: str | None = None) -> Response:
    """The page of a connect link: what will happen, and the button that starts it."""
    connect = hosted(request)
    try:
        session = await connect.preview(token)
        provider = await _provider_of(request, session.provider)
    except GrantkeeperError as exc:
        return _failure(request, exc)
    left = max(0.0, session.expires_at - time.time())
    page = _page(request, "connect/start.html", tone="", provider=session.provider, grant=session.grant,
                 scopes=session.scopes, token=token, expires_in=_in_words(left))  # fmt: skip
    # The form posts here, and the answer sends the browser on to the provider: both must be allowed targets.
    forms = "'self'" + (f" {provider}" if provider else "")
    return Response(page, 200, {**PAGE_HEADERS, "Content-Security-Policy": _CSP.format(forms=forms)},
                    media_type="text/html")  # fmt: skip


@router.post(OPEN_PATH, include_in_schema=False)
async def post_connect(request: Request) -> Response:
    """The button: open the session (once) and send the browser to the provider."""
    tokens = _fields((await request.body()).decode("utf-8", "replace"), 5).get("token") or []
    connect = hosted(request)
    try:
        opened = await connect.open(tokens[0] if len(tokens) == 1 else None)
    except GrantkeeperError as exc:
        return _failure(request, exc)
    _audit(request, opened.session.grant, opened.session.api_key, "connect-open", f"session {opened.session.id}")
    answer = Response(status_code=303, headers={**PAGE_HEADERS, "Location": opened.location})
    answer.set_cookie(opened.cookie, opened.cookie_value, max_age=int(connect.settings.ttl),
                      path=_base(connect.settings) + CALLBACK_PATH, secure=connect.settings.secure, httponly=True,
                      samesite="lax")  # fmt: skip  # lax: the provider's redirect back is a cross-site navigation
    return answer


@router.get(CALLBACK_PATH, include_in_schema=False)
async def get_callback(request: Request) -> Response:
    """Where the provider sends the browser back: exchange the code, store the grant, say how it went."""
    query = _fields(request.url.query, 20)
    connect = hosted(request)
    try:
        done = await connect.callback(query, dict(request.cookies))
    except GrantkeeperError as exc:
        return _failure(request, exc)
    session = done.session
    _audit(request, session.grant, session.api_key, "connect-callback", "connected")
    page = _page(request, "connect/result.html", tone="ok", title=f"{session.provider} is connected",
                 message=f"The connection {session.grant} to {session.provider} is ready. You can return to the app "
                 "that sent you here.", code=None, session=session.id)  # fmt: skip
    answer = Response(page, 200, PAGE_HEADERS, media_type="text/html")
    answer.delete_cookie(cookie_name(session.id), path=_base(connect.settings) + CALLBACK_PATH,
                         secure=connect.settings.secure, httponly=True, samesite="lax")  # fmt: skip
    return answer


async def _provider_of(request: Request, name: str) -> str | None:
    """The origin of provider `name`'s authorization endpoint (for the page's form-action)."""
    provider = await asyncio.to_thread(broker_of(request).store.get_provider, name)
    if provider.authorization_url is None:
        return None
    parts = urlsplit(provider.authorization_url)
    return f"{parts.scheme}://{parts.netloc}"


def _failure(request: Request, error: GrantkeeperError) -> Response:
    """The page for a refusal or a failed connect: what went wrong, in words for the end user, and its code."""
    callback = request.url.path.endswith(CALLBACK_PATH)
    if error.grant is not None:
        _audit(request, error.grant, "-", "connect-callback" if callback else "connect-open", error.code)
    request.state.outcome = error.code
    status = status_for(error) if isinstance(error, ConnectError) else 400
    if isinstance(error, ConnectError):
        title, message = "This link cannot be used", error.message
    elif isinstance(error, TransientError) and not callback:  # the link itself is still good
        title, message, status = "Please try again", _BUSY, 503
    else:
        title, message = "Nothing was connected", _DENIED if isinstance(error, ConsentDenied) else _FAILED
    page = _page(request, "connect/result.html", tone="error", title=title, message=message, code=error.code,
                 session=None)  # fmt: skip
    return Response(page, status, PAGE_HEADERS, media_type="text/html")


def _fields(text: str, most: int) -> dict[str, list[str]]:
    """A form or query string's fields; more than `most` of them is no answer we expect (so none)."""
    try:
        return parse_qs(text, keep_blank_values=True, max_num_fields=most)
    except ValueError:
        return {}


def _audit(request: Request, grant: str, api_key: str, action: str, detail: str) -> None:
    state = request.state
    state.grant, state.caller, state.action, state.detail = grant, api_key, action, detail


def _page(request: Request, template: str, **values: Any) -> str:
    return _TEMPLATES.get_template(template).render(base=_base(hosted(request).settings), **values)


def _base(settings: ConnectSettings) -> str:
    """The public URL's path (a broker behind a proxy may live under one), so links work from every page."""
    return urlsplit(settings.public_url or "").path.rstrip("/")


def _in_words(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"in {minutes} minute{'s' if minutes != 1 else ''}" if minutes >= 1 else "in less than a minute"
