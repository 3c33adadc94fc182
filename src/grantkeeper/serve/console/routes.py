"""The console's routes under ``/ui/``: sign-in and sign-out, grants, a grant, providers, activity, API keys and
the dashboard.

Who may do what: any page needs a session signed in with a key that has the ``ui`` scope; the grants shown and
acted on are those the key's grant patterns reach (another grant is a 404, as on the API). "Refresh now" and
"revoke" also need the key's ``refresh`` scope, the API's scope for changing a grant's tokens. Both go through
the keeper (`AsyncKeeper.refresh`; `grantkeeper.consent.revoke_in`, the code of ``grantkeeper grant revoke``),
and both are written to the audit trail (actions ``ui_refresh``, ``ui_revoke``, as are ``ui_sign_in`` and
``ui_sign_out``).

Every form that changes state carries a CSRF token: the session's (`sessions.csrf_token`), or for the sign-in
form the token of a short-lived pre-session cookie (login CSRF). A POST without the right one is refused 403.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlencode

from fastapi import APIRouter, Query, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from grantkeeper._exceptions import GrantkeeperError, UnknownGrant
from grantkeeper.cli._render import health, provider_dict
from grantkeeper.consent import revoke_in
from grantkeeper.engine import GrantStatus
from grantkeeper.model import GrantState
from grantkeeper.serve.apikeys import parse_key
from grantkeeper.serve.broker import Broker
from grantkeeper.serve.console import charts, queries
from grantkeeper.serve.console.headers import PREFIX
from grantkeeper.serve.console.pages import TEMPLATES, environment, evidence_rows, lineage
from grantkeeper.serve.console.sessions import ConsoleSession, SessionStore, csrf_token, csrf_valid
from grantkeeper.serve.errors import ServeError, conceal
from grantkeeper.stores.access import grant_matches

__all__ = ["COOKIE", "LOGIN_COOKIE", "Console", "ConsoleRefusal", "router"]

COOKIE = "gk_console"
LOGIN_COOKIE = "gk_console_login"
_LOGIN_TTL = 3600
_HTML = "text/html; charset=utf-8"

router = APIRouter(prefix=PREFIX, include_in_schema=False)


class ConsoleRefusal(Exception):  # not "...Error": it carries an answer, not a failure
    """Raised by a route to answer with `response` at once (a redirect to sign in, a 403 page)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


class Console:
    """What the routes share: the broker, the sessions and the templates (``app.state.console``)."""

    def __init__(self, broker: Broker, *, hot_window: float = queries.HOT_WINDOW) -> None:
        self.broker = broker
        self.hot_window = hot_window  # the scheduler's, for its view of each grant
        self.sessions = SessionStore(broker.store)
        self.templates = environment()
        self.stylesheet = (TEMPLATES / "console.css").read_bytes()

    def page(self, request: Request, template: str, code: int = 200, /, **context: Any) -> HTMLResponse:
        context.setdefault("session", getattr(request.state, "console_session", None))
        context.setdefault("csrf", getattr(request.state, "console_csrf", ""))
        body = self.templates.get_template(template).render(path=request.url.path, **context)
        return HTMLResponse(body, status_code=code, media_type=_HTML)


def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form's fields, first value each (the body is capped by `BodyLimit`)."""
    fields = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items()}


def _to_sign_in() -> ConsoleRefusal:
    return ConsoleRefusal(RedirectResponse(f"{PREFIX}/login", status_code=303))


def _forbidden(request: Request, message: str) -> ConsoleRefusal:
    return ConsoleRefusal(_console(request).page(request, "message.html", 403, title="Refused", message=message))


async def _signed_in(request: Request) -> ConsoleSession:
    """The request's session in force, or a redirect to the sign-in page (a refusal, for a POST)."""
    cookie = request.cookies.get(COOKIE)
    console = _console(request)
    session = None if not cookie else await asyncio.to_thread(console.sessions.find, cookie, now=time.time())
    if session is None or "ui" not in session.scopes:
        if request.method == "POST":
            raise _forbidden(request, "You are not signed in (or your session ended): sign in again.")
        raise _to_sign_in()
    assert cookie is not None
    request.state.caller = session.api_key
    request.state.console_session = session
    request.state.console_csrf = csrf_token(cookie)
    return session


async def _changing(request: Request, action: str, grant: str | None = None) -> tuple[ConsoleSession, dict[str, str]]:
    """A state-changing POST: signed in, with the session's CSRF token; recorded in the audit trail."""
    session = await _signed_in(request)
    form = await _form(request)
    if not csrf_valid(request.cookies.get(COOKIE), form.get("csrf")):
        raise _forbidden(request, "The form's CSRF token is missing or wrong: reload the page and try again.")
    request.state.action, request.state.grant = action, grant
    return session, form


def _not_found(request: Request, name: str) -> ConsoleRefusal:
    return ConsoleRefusal(_console(request).page(request, "message.html", 404, title="No such grant",
                                                 message=f"There is no grant named {conceal(name)!r}."))  # fmt: skip


def _reachable(request: Request, session: ConsoleSession, name: str) -> None:
    if not grant_matches(name, session.grants):
        raise _not_found(request, name)  # as the API: a grant the key may not reach is not there


async def _status(request: Request, name: str) -> GrantStatus:
    try:
        return await _console(request).broker.keeper.status(name)
    except UnknownGrant:
        raise _not_found(request, name) from None


# ---------------------------------------------------------------------------------------------- sign-in, sign-out


@router.get("/login")
async def login_page(request: Request) -> Response:
    return _login_form(request)


def _login_form(request: Request, *, status: int = 200, error: str | None = None) -> Response:
    pre = secrets.token_urlsafe(32)
    response = _console(request).page(request, "login.html", status, csrf=csrf_token(pre), error=error,
                                      session=None)  # fmt: skip
    response.set_cookie(LOGIN_COOKIE, pre, max_age=_LOGIN_TTL, path=f"{PREFIX}/login", httponly=True,
                        secure=_secure(request), samesite="strict")  # fmt: skip
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    if not csrf_valid(request.cookies.get(LOGIN_COOKIE), form.get("csrf")):
        return _login_form(request, status=403, error="The sign-in form expired or was not sent from this page; "
                           "try again.")  # fmt: skip
    key = form.get("key", "").strip()
    console = _console(request)
    try:
        caller = await console.broker.auth.caller_for_key(key)
    except ServeError as refused:
        return _login_form(request, status=refused.status, error=refused.detail)
    request.state.caller, request.state.action = caller.name, "ui_sign_in"
    key_id = parse_key(key)
    if "ui" not in caller.scopes or key_id is None:
        return _login_form(request, status=403, error=f"API key {caller.name!r} lacks the 'ui' scope the console "
                           "needs: create one with 'grantkeeper apikey create NAME --scopes ui'.")  # fmt: skip
    cookie = await asyncio.to_thread(console.sessions.create, caller.name, key_id, now=time.time())
    response = RedirectResponse(f"{PREFIX}/grants", status_code=303)
    response.set_cookie(COOKIE, cookie, max_age=int(console.sessions.ttl), path=PREFIX, httponly=True,
                        secure=_secure(request), samesite="strict")  # fmt: skip
    response.delete_cookie(LOGIN_COOKIE, path=f"{PREFIX}/login", httponly=True, secure=_secure(request),
                           samesite="strict")  # fmt: skip
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    await _changing(request, "ui_sign_out")
    cookie = request.cookies[COOKIE]
    await asyncio.to_thread(_console(request).sessions.end, cookie, now=time.time())
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(COOKIE, path=PREFIX, httponly=True, secure=_secure(request), samesite="strict")
    return response


# ---------------------------------------------------------------------------------------------- pages


@router.get("")
@router.get("/")
async def home(request: Request) -> Response:
    await _signed_in(request)
    return RedirectResponse(f"{PREFIX}/grants", status_code=303)


@router.get("/static/console.css")
async def stylesheet(request: Request) -> Response:
    return Response(_console(request).stylesheet, media_type="text/css; charset=utf-8")


_NUMERIC_SORTS = ("expires", "generation")


@router.get("/grants")
async def grants(
    request: Request,
    state: Annotated[str | None, Query(max_length=40)] = None,
    provider: Annotated[str | None, Query(max_length=200)] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    sort: Annotated[str, Query(max_length=20)] = "name",
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "asc",
    after: Annotated[str | None, Query(max_length=600)] = None,
    before: Annotated[str | None, Query(max_length=600)] = None,
    done: Annotated[str | None, Query(max_length=300)] = None,
) -> Response:
    session = await _signed_in(request)
    console = _console(request)
    sort = sort if sort in queries.SORTS else "name"
    cursors = [queries.decode_cursor(c) for c in (after, before)]
    # A cursor whose value does not fit the sort (an edited link) starts over rather than failing the statement.
    cursors = [c if c is None or isinstance(c[0], int | float) == (sort in _NUMERIC_SORTS) else None for c in cursors]
    query = queries.GrantsQuery(state=state or None, provider=provider or None, search=q or None, sort=sort,
                                descending=order == "desc", after=cursors[0], before=cursors[1],
                                patterns=session.grants, hot_window=console.hot_window)  # fmt: skip
    store = console.broker.store
    page, providers = await asyncio.gather(asyncio.to_thread(queries.grants_page, store, query),
                                           asyncio.to_thread(store.list_providers))  # fmt: skip
    now = time.time()
    # What goes back into the page and its links: a token pasted into the search box is cut out.
    filters = {
        "state": conceal(state or ""),
        "provider": conceal(provider or ""),
        "q": conceal(q or ""),
        "sort": sort,
        "order": order,
    }

    def link(**changes: str) -> str:
        return f"{PREFIX}/grants?" + urlencode({k: v for k, v in {**filters, **changes}.items() if v})

    rows = [(r, health(GrantState(r.state), r.last_error, r.ends, now)) for r in page.rows]
    return console.page(
        request, "grants.html", rows=rows, now=now, filters=filters, states=[s.value for s in GrantState],
        providers=sorted(p.name for p in providers), sorts=list(queries.SORTS), done=done and conceal(done),
        next_link=link(after=queries.encode_cursor(page.rows[-1])) if page.more_after and page.rows else None,
        prev_link=link(before=queries.encode_cursor(page.rows[0])) if page.more_before and page.rows else None,
        first_link=link() if page.more_before else None, sort_link=link, quote=quote,
    )  # fmt: skip


@router.get("/grants/{name}")
async def grant(request: Request, name: str, done: Annotated[str | None, Query(max_length=300)] = None,
                failed: Annotated[str | None, Query(max_length=300)] = None) -> Response:  # fmt: skip
    session = await _signed_in(request)
    _reachable(request, session, name)
    keeper = _console(request).broker.keeper
    status = await _status(request, name)
    diagnosis, history, scheduler = await asyncio.gather(
        keeper.doctor(name), keeper.history(name, limit=50),
        asyncio.to_thread(queries.scheduler_of, _console(request).broker.store, name, now=time.time(),
                          hot_window=_console(request).hot_window),
    )  # fmt: skip
    tables, facts = evidence_rows(diagnosis.evidence)
    colour = health(status.state, status.last_error, status.refresh_ends, time.time())
    return _console(request).page(
        request, "grant.html", status=status, diagnosis=diagnosis, history=history, tables=tables, facts=facts,
        lineage=lineage(history, status.generation, status.refresh_fp), health=colour, done=done and conceal(done),
        failed=failed and conceal(failed),
        may_change="refresh" in session.scopes, quote=quote, scheduler=scheduler,
    )  # fmt: skip


def _may_change(request: Request, session: ConsoleSession) -> None:
    if "refresh" not in session.scopes:
        raise _forbidden(request, f"API key {session.api_key!r} lacks the 'refresh' scope that refreshing and "
                         "revoking grants need.")  # fmt: skip


@router.post("/grants/{name}/refresh")
async def refresh(request: Request, name: str) -> Response:
    session, _ = await _changing(request, "ui_refresh", name)
    _reachable(request, session, name)
    _may_change(request, session)
    keeper = _console(request).broker.keeper
    before = (await _status(request, name)).generation
    back = f"{PREFIX}/grants/{quote(name, safe='')}"
    try:
        grant = await keeper.refresh(name, force=True)
    except GrantkeeperError as failed:
        request.state.outcome = failed.code
        return RedirectResponse(f"{back}?{urlencode({'failed': failed.code})}", status_code=303)
    request.state.fingerprint, request.state.generation = grant.access_fp, grant.generation
    done = f"refreshed: generation {before} -> {grant.generation}"
    return RedirectResponse(f"{back}?{urlencode({'done': done})}", status_code=303)


@router.get("/grants/{name}/revoke")
async def revoke_page(request: Request, name: str) -> Response:
    session = await _signed_in(request)
    _reachable(request, session, name)
    status = await _status(request, name)
    return _console(request).page(request, "revoke.html", status=status, error=None, quote=quote)


@router.post("/grants/{name}/revoke")
async def revoke(request: Request, name: str) -> Response:
    session, form = await _changing(request, "ui_revoke", name)
    _reachable(request, session, name)
    _may_change(request, session)
    broker = _console(request).broker
    local_only = form.get("local_only") == "1"
    try:
        revoked = await asyncio.to_thread(revoke_in, broker.store, name, now=time.time(), local_only=local_only)
    except UnknownGrant:
        raise _not_found(request, name) from None
    except GrantkeeperError as failed:
        request.state.outcome = failed.code
        status = await _status(request, name)
        return _console(request).page(request, "revoke.html", 409, status=status, error=str(failed), quote=quote)
    # This process may still hold the grant's access token in its cache: drop it, as another process's commit would.
    broker.keeper._on_store_change(name, revoked.generation, "invalidate")
    request.state.generation = revoked.generation
    where = "removed here only" if local_only else "revoked at the provider and removed"
    return RedirectResponse(f"{PREFIX}/grants?{urlencode({'done': f'grant {name} {where}'})}", status_code=303)


@router.get("/providers")
async def providers(request: Request) -> Response:
    await _signed_in(request)
    found = await asyncio.to_thread(_console(request).broker.store.list_providers)
    return _console(request).page(request, "providers.html", providers=[provider_dict(p) for p in found])


@router.get("/activity")
async def activity(request: Request) -> Response:
    session = await _signed_in(request)
    console = _console(request)
    store = console.broker.store
    attempts, audit = await asyncio.gather(asyncio.to_thread(queries.recent_attempts, store, limit=200),
                                           asyncio.to_thread(store.list_audit, limit=200))  # fmt: skip
    reachable = [a for a in attempts if grant_matches(a.grant, session.grants)][:50]
    entries = [e for e in audit if e.grant is None or grant_matches(e.grant, session.grants)][:50]
    registry = console.broker.metrics.registry
    webhooks = {outcome: int(registry.get_sample_value("grantkeeper_webhook_deliveries_total",
                                                       {"outcome": outcome}) or 0)
                for outcome in ("delivered", "failed")}  # fmt: skip
    return console.page(request, "activity.html", attempts=reachable, audit=entries, webhooks=webhooks,
                        outcome_class=charts.outcome_class)  # fmt: skip


@router.get("/keys")
async def keys(request: Request) -> Response:
    await _signed_in(request)
    store = _console(request).broker.store
    found = await asyncio.to_thread(store.list_api_keys)
    used = await asyncio.to_thread(queries.key_last_used, store, [k.name for k in found])
    return _console(request).page(request, "keys.html", keys=found, used=used, now=time.time())


@router.get("/dashboard")
async def dashboard(request: Request) -> Response:
    await _signed_in(request)
    now = time.time()
    numbers = await asyncio.to_thread(queries.overview, _console(request).broker.store, now=now)
    state_css = {GrantState.ACTIVE.value: "ok", GrantState.NEEDS_REAUTH.value: "bad"}
    by_state = charts.bars([(s, n, state_css.get(s, "wait")) for s, n in numbers.by_state.items()],
                           label="grants by state")  # fmt: skip
    per_minute = charts.stacked_columns(numbers.per_minute, label="refreshes per minute by outcome, last hour")
    outcomes = sorted({o for c in numbers.per_minute for o in c}, key=lambda o: (charts.outcome_class(o), o))
    totals = {o: sum(c[o] for c in numbers.per_minute) for o in outcomes}
    return _console(request).page(
        request, "dashboard.html", numbers=numbers, by_state=by_state, per_minute=per_minute, totals=totals,
        outcome_class=charts.outcome_class, now=now, quote=quote,
    )  # fmt: skip
