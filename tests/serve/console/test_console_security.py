"""The console's security over real HTTP to a real ``grantkeeper serve``: no token in any answer, CSRF on every
state-changing form, sessions that end at sign-out and at key revocation, the ``ui`` scope, the headers.

The provider is tests/system/test_canary.py's `CanarySimulator` (every token it issues is a canary) and the scan is
that file's `find_leaks`: every canary and every 8-character fragment of one, in every body and every header.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from grantkeeper.stores import open_store
from tests.helpers import files_bytes, revoke_at_provider, setup_grant
from tests.serve.conftest import ServeProcess, make_key
from tests.serve.console.helpers import csrf_of, revoke_key, sign_in
from tests.system.test_canary import CanarySimulator, find_leaks

Start = Callable[..., ServeProcess]
PAGES = ("/ui/grants", "/ui/grants/acme-1", "/ui/grants/acme-1/revoke", "/ui/providers", "/ui/activity", "/ui/keys",
         "/ui/dashboard")  # fmt: skip


@pytest.fixture
def canary_sim() -> Iterator[CanarySimulator]:
    sim = CanarySimulator()
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def console(tmp_path: Path, canary_sim: CanarySimulator, serve_process: Start) -> tuple[ServeProcess, str, str]:
    """A serve over a store with grants acme-1, acme-2 and billing; (server, store URL, key with ui,refresh)."""
    store_url = f"sqlite://{tmp_path}/serve.db"
    for grant in ("acme-1", "acme-2", "billing"):
        setup_grant(store_url, canary_sim, grant=grant)
    key = make_key(store_url, "ops", grants="acme-*", scopes="ui,refresh")
    return serve_process(store_url, env={"GRANTKEEPER_SERVE_LOG_LEVEL": "debug"}), store_url, key


def _generation(store_url: str, grant: str) -> int:
    store = open_store(store_url)
    try:
        return store.get_grant(grant).generation
    finally:
        store.close()


def test_no_token_in_any_console_answer(console: tuple[ServeProcess, str, str], canary_sim: CanarySimulator,
                                        tmp_path: Path) -> None:  # fmt: skip
    server, store_url, key = console
    captures: list[tuple[str, str]] = []

    def keep(label: str, response: httpx.Response) -> httpx.Response:
        captures.append((f"{label}: {response.status_code} body", response.text))
        captures.append((f"{label}: headers", repr(response.headers)))
        return response

    with server.client() as http:
        keep("sign-in form", http.get("/ui/login"))
        signed_in = sign_in(http, key)
        assert signed_in.status_code == 303
        cookie = http.cookies["gk_console"]
        # The one answer that must carry the session cookie is the sign-in's Set-Cookie: its body is scanned, and
        # its headers without that cookie (the cookie itself joins the canaries for every other answer).
        captures.append(("sign-in body", signed_in.text))
        captures.append(("sign-in headers without the cookie", repr(signed_in.headers).replace(cookie, "")))
        keep("refresh page", http.get("/ui/grants/acme-1"))
        refreshed = keep(
            "refresh now",
            http.post("/ui/grants/acme-1/refresh", data={"csrf": csrf_of(http.get("/ui/grants/acme-1").text)}),
        )
        assert refreshed.status_code == 303 and "done=" in refreshed.headers["location"]
        revoke_at_provider(store_url, "acme-2", canary_sim)  # acme-2 fails from now on: the doctor explains why
        failed = keep(
            "failing refresh",
            http.post("/ui/grants/acme-2/refresh", data={"csrf": csrf_of(http.get("/ui/grants/acme-2").text)}),
        )
        assert "failed=" in failed.headers["location"]
        for path in (
            *PAGES,
            "/ui/grants/acme-2",
            "/ui/grants?state=needs_reauth",
            "/ui/grants?q=acme&sort=expires",
            "/ui/static/console.css",
            "/ui/",
            "/ui/grants/billing",
            "/ui/grants/nope",
            "/ui/nope",
        ):
            keep(path, http.get(path))
        # Tokens where a name or a search goes: never echoed.
        token = next(iter(canary_sim.issued_tokens()))
        keep("token as grant name", http.get(f"/ui/grants/{token}"))
        keep("token as search", http.get("/ui/grants", params={"q": token}))
        keep("token as filters", http.get("/ui/grants", params={"provider": token, "state": token}))
        keep("token as sign-in key", http.post("/ui/login", data={"csrf": "x", "key": token}))
        keep(
            "revoke refused (no endpoint)",
            http.post("/ui/grants/acme-1/revoke", data={"csrf": csrf_of(http.get("/ui/grants/acme-1").text)}),
        )
        keep(
            "revoke here",
            http.post(
                "/ui/grants/acme-1/revoke", data={"csrf": csrf_of(http.get("/ui/grants").text), "local_only": "1"}
            ),
        )
        keep("after revoke", http.get("/ui/grants"))
        keep("sign out", http.post("/ui/logout", data={"csrf": csrf_of(http.get("/ui/keys").text)}))
        keep("after sign-out", http.get("/ui/grants"))
    assert server.terminate() == 0
    store = open_store(store_url)
    try:
        audit = store.list_audit(api_key="ops", limit=100)
    finally:
        store.close()
    # The console's actions are in the audit trail, each with its grant and the status it got.
    done = {(e.action, e.grant, e.status) for e in audit}
    assert {
        ("ui_sign_in", None, 303),
        ("ui_refresh", "acme-1", 303),
        ("ui_refresh", "acme-2", 303),
        ("ui_revoke", "acme-1", 409),
        ("ui_revoke", "acme-1", 303),
        ("ui_sign_out", None, 303),
    } <= done, done
    captures.append(("audit trail", repr(audit)))
    captures.append(("serve log", server.log_text()))
    captures.append(("store files", files_bytes(tmp_path).decode("latin-1")))
    canaries = set(canary_sim.issued_tokens()) | {canary_sim.client_secret, key.split("_", 2)[2], cookie}
    leaks = find_leaks(captures, canaries)
    assert not leaks, leaks
    assert sum(len(text) for _, text in captures) > 30_000  # the scan saw the pages, not nothing


def test_posts_without_the_csrf_token_are_refused(console: tuple[ServeProcess, str, str]) -> None:
    server, store_url, key = console
    before = _generation(store_url, "acme-1")
    with server.client() as http:
        assert sign_in(http, key).status_code == 303
        good = csrf_of(http.get("/ui/grants").text)
        for path, form in (("/ui/grants/acme-1/refresh", {}), ("/ui/grants/acme-1/revoke", {"local_only": "1"}),
                           ("/ui/logout", {})):  # fmt: skip
            for csrf in (None, "", "0" * 64, good[:-1] + ("0" if good[-1] != "0" else "1")):
                data = form if csrf is None else {**form, "csrf": csrf}
                refused = http.post(path, data=data)
                assert refused.status_code == 403, (path, csrf, refused.text)
                assert "CSRF" in refused.text
        # Nothing happened: same generation, the grant is there, the session still works.
        assert _generation(store_url, "acme-1") == before
        assert http.get("/ui/grants/acme-1").status_code == 200
        # With the token, the same POST works (so the refusals above were about the token).
        assert http.post("/ui/grants/acme-1/refresh", data={"csrf": good}).status_code == 303
        assert _generation(store_url, "acme-1") == before + 1
    # Sign-in has its own token, from the form's pre-session cookie: without it, no session is made.
    with server.client() as http:
        http.get("/ui/login")
        refused = http.post("/ui/login", data={"key": key})
        assert refused.status_code == 403 and "gk_console" not in http.cookies
    with server.client() as http:  # the token of another browser's form (no cookie of its own) does not do either
        with server.client() as other:
            token = csrf_of(other.get("/ui/login").text)
        assert http.post("/ui/login", data={"key": key, "csrf": token}).status_code == 403
        assert "gk_console" not in http.cookies


def test_a_cookie_from_before_sign_out_is_refused(console: tuple[ServeProcess, str, str]) -> None:
    server, store_url, key = console
    with server.client() as http:
        assert sign_in(http, key).status_code == 303
        old_cookie = http.cookies["gk_console"]
        old_csrf = csrf_of(http.get("/ui/grants").text)
        with server.client() as second:  # another session of the same key is not ended by this sign-out
            assert sign_in(second, key).status_code == 303
            signed_out = http.post("/ui/logout", data={"csrf": old_csrf})
            assert signed_out.status_code == 303 and signed_out.headers["location"] == "/ui/login"
            assert second.get("/ui/grants").status_code == 200
    before = _generation(store_url, "acme-1")
    with server.client(cookies={"gk_console": old_cookie}) as replay:
        for path in PAGES:
            page = replay.get(path)
            assert page.status_code == 303 and page.headers["location"] == "/ui/login", path
        refused = replay.post("/ui/grants/acme-1/refresh", data={"csrf": old_csrf})
        assert refused.status_code == 403
    assert _generation(store_url, "acme-1") == before


def test_only_a_usable_key_with_the_ui_scope_signs_in(console: tuple[ServeProcess, str, str]) -> None:
    server, store_url, key = console
    reader = make_key(store_url, "reader", scopes="token,read,refresh")
    expired = make_key(store_url, "old", scopes="ui", lifetime=0.001)
    time.sleep(0.01)
    with server.client() as http:
        refused = sign_in(http, reader)
        assert refused.status_code == 403 and "lacks the &#39;ui&#39; scope" in refused.text
        assert "gk_console" not in http.cookies
        assert http.get("/ui/grants").status_code == 303
        for wrong, status in ((expired, 401), ("gk_000000000000_" + "A" * 43, 401), ("not a key", 401)):
            answer = sign_in(http, wrong)
            assert answer.status_code == status and "gk_console" not in http.cookies, answer.text
    # A session ends when its key is revoked, on the next request.
    with server.client() as http:
        assert sign_in(http, key).status_code == 303
        assert http.get("/ui/grants").status_code == 200
        revoke_key(store_url, "ops")
        assert http.get("/ui/grants").status_code == 303


def test_a_key_without_refresh_scope_sees_but_does_not_change(console: tuple[ServeProcess, str, str]) -> None:
    server, store_url, _ = console
    viewer = make_key(store_url, "viewer", grants="acme-*", scopes="ui")
    before = _generation(store_url, "acme-1")
    with server.client() as http:
        assert sign_in(http, viewer).status_code == 303
        page = http.get("/ui/grants/acme-1")
        assert page.status_code == 200 and "refresh-now" not in page.text
        refused = http.post("/ui/grants/acme-1/refresh", data={"csrf": csrf_of(page.text)})
        assert refused.status_code == 403 and "refresh" in refused.text
        # Grants outside the key's patterns are not there at all.
        assert http.get("/ui/grants/billing").status_code == 404
        assert "billing" not in http.get("/ui/grants").text
    assert _generation(store_url, "acme-1") == before


def _check_headers(label: str, response: httpx.Response) -> None:
    headers = response.headers
    csp = headers.get("content-security-policy", "")
    directives = {part.split()[0]: part.split()[1:] for part in csp.split(";") if part.strip()}
    assert directives.get("frame-ancestors") == ["'none'"], (label, csp)
    assert "'unsafe-inline'" not in directives.get("script-src", directives.get("default-src", ["'unsafe-inline'"]))
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp, (label, csp)
    assert headers.get("x-frame-options") == "DENY", label
    assert headers.get("x-content-type-options") == "nosniff", label
    assert headers.get("referrer-policy") == "no-referrer", label
    assert headers.get("cache-control") == "no-store", label


def test_every_console_answer_carries_the_security_headers(console: tuple[ServeProcess, str, str]) -> None:
    server, _, key = console
    with server.client() as http:
        answers = [("login", http.get("/ui/login")), ("home, signed out", http.get("/ui/")),
                   ("page, signed out", http.get("/ui/grants")), ("css", http.get("/ui/static/console.css")),
                   ("unknown route", http.get("/ui/nope")), ("csrf refusal", http.post("/ui/logout"))]  # fmt: skip
        signed_in = sign_in(http, key)
        answers.append(("sign-in", signed_in))
        answers += [(path, http.get(path)) for path in PAGES]
        answers += [("unknown grant", http.get("/ui/grants/nope")), ("bad query", http.get("/ui/grants?order=x"))]
        for label, answer in answers:
            _check_headers(label, answer)
        assert {a.status_code for _, a in answers} >= {200, 303, 403, 404, 422}
        # The session cookie: HttpOnly, SameSite=Strict, an expiry, scoped to /ui; not Secure on plain HTTP.
        set_cookie = next(v for v in signed_in.headers.get_list("set-cookie") if v.startswith("gk_console="))
        attributes = {a.strip().split("=")[0].lower() for a in set_cookie.split(";")[1:]}
        assert {"httponly", "max-age", "path"} <= attributes and "secure" not in attributes
        assert "samesite=strict" in set_cookie.lower() and "path=/ui" in set_cookie.lower()
        # The API's answers are not the console's: no console headers there.
        assert "content-security-policy" not in http.get("/livez").headers
