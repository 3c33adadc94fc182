"""What hosted connect refuses, and that a refusal spends nothing it should not: replayed links and callbacks,
expired sessions, tampered ``state``, a ``state`` carried into another browser, a consent the user denied, API
keys without the scope or the grant, and a broker with no public URL. The end user's browser is httpx with a
cookie jar here (tests/dot_browser.py drives DOT's real login and consent pages); every answer is scanned for
the codes, verifiers and tokens of the flow."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

import httpx
import pytest

from grantkeeper import Keeper
from tests.dot_browser import consent, form_fields
from tests.dot_server import DotFactory
from tests.serve.conftest import Hooks, ServeProcess, make_key, metric_sample
from tests.serve.connect.conftest import Hosted, start_hosted

Start = Callable[..., ServeProcess]

pytestmark = pytest.mark.slow


def browser() -> httpx.Client:
    return httpx.Client(timeout=60, follow_redirects=False, trust_env=False)


def press_continue(hosted: Hosted, http: httpx.Client, url: str) -> httpx.Response:
    """Open the connect link and press its button; the answer (a redirect to DOT, or a refusal page)."""
    page = hosted.keep("start page", http.get(url))
    assert page.status_code == 200, page.text
    token = form_fields(page.text, "connect-form")["token"]
    return hosted.keep("continue", http.post(f"{hosted.server.url}/connect", data={"token": token}))


def consent_callback(hosted: Hosted, http: httpx.Client, url: str, *, allow: bool = True) -> str:
    """The URL DOT sends the browser back to after the user logs in and consents (not followed yet)."""
    opened = press_continue(hosted, http, url)
    assert opened.status_code == 303, opened.text
    callback = consent(http, hosted.dot, opened.headers["location"], allow=allow)
    assert callback.startswith(f"{hosted.server.url}/oauth/callback?")
    hosted.remember_code(callback)
    return callback


def refused(answer: httpx.Response, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text
    assert f'<code id="code">{code}</code>' in answer.text
    check_page_headers(answer)


def check_page_headers(answer: httpx.Response) -> None:
    csp = answer.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["content-type"].startswith("text/html")


def grant_names(store_url: str) -> list[str]:
    with Keeper.open(store_url) as keeper:
        return [g.name for g in keeper.grants()]


def test_a_link_works_once_and_a_callback_once(hosted: Hosted) -> None:
    url = hosted.url()
    with browser() as http:
        callback = consent_callback(hosted, http, url)
        # The link again: its page and its button both refuse.
        refused(hosted.keep("link again", http.get(url)), 410, "connect_session_used")
        token = url.split("token=", 1)[1]
        refused(hosted.keep("button again", http.post(f"{hosted.server.url}/connect", data={"token": token})), 410,
                "connect_session_used")  # fmt: skip
        mark = hosted.dot.log_mark()
        done = hosted.keep("callback", http.get(callback))
        assert done.status_code == 200 and "dot is connected" in done.text
        check_page_headers(done)
        # The same answer from the provider again: refused before any code exchange.
        refused(hosted.keep("callback again", http.get(callback)), 410, "connect_session_used")
    assert len(hosted.dot.token_calls(mark, grant_type="authorization_code")) == 1
    assert grant_names(hosted.store_url) == ["acme-42"]
    assert [e["kind"] for e in hosted.events(1)] == ["connected"]
    assert not hosted.leaks()


def test_a_changed_link_is_refused_and_spends_nothing(hosted: Hosted) -> None:
    url = hosted.url()
    base, token = url.split("token=", 1)
    with browser() as http:
        changed = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        refused(hosted.keep("changed link", http.get(f"{base}token={changed}")), 404, "connect_session_unknown")
        refused(hosted.keep("no token", http.post(f"{hosted.server.url}/connect", data={})), 404,
                "connect_session_unknown")  # fmt: skip
        refused(hosted.keep("junk token", http.get(f"{base}token=%3Cscript%3E")), 404, "connect_session_unknown")
        # The real link still works.
        assert press_continue(hosted, http, url).status_code == 303
    assert not hosted.leaks()


def test_a_tampered_or_missing_state_is_refused_and_spends_nothing(hosted: Hosted) -> None:
    with browser() as http:
        callback = consent_callback(hosted, http, hosted.url())
        head, state = callback.split("state=", 1)
        state, _, rest = state.partition("&")
        tampered = state[:-3] + ("xyz" if not state.endswith("xyz") else "abc")
        refused(hosted.keep("tampered", http.get(f"{head}state={tampered}&{rest}".rstrip("&"))), 400,
                "connect_state_invalid")  # fmt: skip
        no_state = callback.replace(f"state={state}", "state=")
        refused(hosted.keep("no state", http.get(no_state)), 400, "connect_state_invalid")
        twice = f"{callback}&state={state}"
        refused(hosted.keep("state twice", http.get(twice)), 400, "connect_state_invalid")
        assert grant_names(hosted.store_url) == []
        # None of those spent the session: the provider's real answer still connects the grant.
        done = hosted.keep("callback", http.get(callback))
        assert done.status_code == 200, done.text
    assert grant_names(hosted.store_url) == ["acme-42"]
    assert not hosted.leaks()


def test_a_state_carried_into_another_browser_is_refused(hosted: Hosted) -> None:
    """The answer for session A reaches a browser that opened only session B (a link forwarded to another person,
    or a forged redirect): refused, and A still completes in the browser that opened it."""
    with browser() as alice, browser() as mallory:
        callback_a = consent_callback(hosted, alice, hosted.url("acme-a"))
        opened_b = press_continue(hosted, mallory, hosted.url("acme-b"))
        assert opened_b.status_code == 303
        refused(hosted.keep("A's state in B's browser", mallory.get(callback_a)), 400, "connect_browser_mismatch")
        assert grant_names(hosted.store_url) == []
        done = hosted.keep("A's callback", alice.get(callback_a))
        assert done.status_code == 200, done.text
    assert grant_names(hosted.store_url) == ["acme-a"]
    assert not hosted.leaks()


def test_a_denied_consent_stores_nothing_and_says_why(hosted: Hosted) -> None:
    with browser() as http:
        callback = consent_callback(hosted, http, hosted.url(), allow=False)
        assert "error=access_denied" in callback
        refused(hosted.keep("denied", http.get(callback)), 400, "consent_denied")
    assert grant_names(hosted.store_url) == []
    [event] = hosted.events(1)
    assert (event["kind"], event["cause"], event["grant"]) == ("connect_failed", "consent_denied", "acme-42")
    with hosted.api(make_key(hosted.store_url, "ops", scopes="metrics")) as http:
        text = http.get("/metrics").text
    assert metric_sample(text, "grantkeeper_grant_events_total", kind="connect_failed", cause="consent_denied") == 1
    assert not hosted.leaks()


def test_expired_links_and_late_callbacks_are_refused(
    serve_store: str, dot_server: DotFactory, serve_process: Start, receiver: Hooks
) -> None:
    hosted = start_hosted(serve_store, dot_server(), serve_process, receiver, "--connect-ttl", "10")
    unopened, late = hosted.url("acme-1"), hosted.url("acme-2")
    created = time.time()
    with browser() as http:
        callback = consent_callback(hosted, http, late)
        time.sleep(max(0.0, created + 11 - time.time()))
        refused(hosted.keep("expired link", http.get(unopened)), 410, "connect_session_expired")
        token = unopened.split("token=", 1)[1]
        refused(hosted.keep("expired button", http.post(f"{hosted.server.url}/connect", data={"token": token})),
                410, "connect_session_expired")  # fmt: skip
        mark = hosted.dot.log_mark()
        refused(hosted.keep("late callback", http.get(callback)), 410, "connect_session_expired")
        refused(hosted.keep("late callback again", http.get(callback)), 410, "connect_session_expired")
    assert hosted.dot.token_calls(mark, grant_type="authorization_code") == []
    assert grant_names(hosted.store_url) == []
    [event] = hosted.events(1)
    assert (event["kind"], event["cause"], event["grant"]) == ("connect_failed", "connect_session_expired", "acme-2")
    assert not hosted.leaks()


def test_the_api_refuses_keys_without_the_scope_or_the_grant(hosted: Hosted) -> None:
    no_scope = make_key(hosted.store_url, "tokens-only", grants="*", scopes="token,read")
    other_grants = make_key(hosted.store_url, "billing", grants="billing-*", scopes="connect")
    answer = hosted.create(key=no_scope)
    assert answer.status_code == 403 and answer.json()["code"] == "forbidden"
    assert "'connect' scope" in answer.json()["detail"]
    answer = hosted.create("acme-42", key=other_grants)
    assert answer.status_code == 403 and "may not reach grant 'acme-42'" in answer.json()["detail"]
    with hosted.server.client() as anonymous:
        body = {"grant": "acme-1", "provider": "dot"}
        answer = hosted.keep("no key", anonymous.post("/v1/connect-sessions", json=body))
    assert answer.status_code == 401
    answer = hosted.create("acme-1", provider="nope")
    assert answer.status_code == 404 and answer.json()["code"] == "unknown_provider"
    answer = hosted.create("acme-1", scopes=["read write"])
    assert answer.status_code == 422
    answer = hosted.create("acme-bad name")
    assert answer.status_code == 422
    # A grant that exists is replaced only when asked.
    with Keeper.open(hosted.store_url) as keeper:
        keeper.import_grant("acme-7", provider="dot", refresh_token="an-old-refresh-token")
    answer = hosted.create("acme-7")
    assert answer.status_code == 409 and answer.json()["code"] == "connect_grant_exists"
    assert '"replace": true' in answer.json()["detail"]
    assert hosted.create("acme-7", replace=True).status_code == 201
    assert not hosted.leaks()


def test_without_a_public_url_sessions_are_refused(serve_store: str, dot_server: DotFactory,
                                                    serve_process: Start) -> None:  # fmt: skip
    dot = dot_server()
    with Keeper.open(serve_store) as keeper:
        keeper.add_provider(dot.provider("dot", authorization_url=dot.authorize_url))
    key = make_key(serve_store, "platform", grants="acme-*", scopes="connect")
    server = serve_process(serve_store)
    with server.client(key) as http:
        answer = http.post("/v1/connect-sessions", json={"grant": "acme-1", "provider": "dot"})
    assert answer.status_code == 409
    problem = answer.json()
    assert problem["code"] == "connect_not_configured" and "--public-url" in problem["detail"]
    assert answer.headers["content-type"] == "application/problem+json"


def test_a_store_outage_at_the_button_is_try_again_and_spends_nothing(hosted: Hosted) -> None:
    url = hosted.url()
    db = hosted.store_url.removeprefix("sqlite://")
    with browser() as http:
        page = hosted.keep("start page", http.get(url))
        token = form_fields(page.text, "connect-form")["token"]
        blocker = sqlite3.connect(db, isolation_level=None)
        try:
            blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the store past the broker's busy timeout
            busy = hosted.keep("busy", http.post(f"{hosted.server.url}/connect", data={"token": token}))
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        refused(busy, 503, "store_unavailable")
        assert "nothing was used up" in busy.text
        assert press_continue(hosted, http, url).status_code == 303
    assert not hosted.leaks()
