"""Console sessions across instances and over TLS: two ``grantkeeper serve`` processes on one PostgreSQL store
share sessions, so a sign-out or a key revocation on one ends the session on the other at its next request; on a
TLS listener the session cookie is ``Secure``."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from grantkeeper import Keeper
from grantkeeper.serve.apikeys import new_key
from grantkeeper.serve.console.sessions import SessionStore
from grantkeeper.stores import open_store
from tests.conftest import TEST_KEY
from tests.helpers import provider_for
from tests.serve.conftest import ServeProcess, make_key
from tests.serve.console.helpers import csrf_of, revoke_key, sign_in
from tests.serve.test_operations import _self_signed

Start = Callable[..., ServeProcess]


def test_sign_out_and_revocation_reach_every_instance(pg_url: str, make_sim: Callable[..., object],
                                                      serve_process: Start, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("GRANTKEEPER_KEY", TEST_KEY)
    open_store(pg_url, migrate=True).close()
    sim = make_sim()
    with Keeper.open(pg_url) as keeper:
        keeper.add_provider(provider_for(sim))
        keeper.import_grant("acme-1", provider="sim", refresh_token=sim.issue_grant())  # type: ignore[attr-defined]
    key = make_key(pg_url, "ops", scopes="ui")
    first = serve_process(pg_url, env={"GRANTKEEPER_RECOVERY_DIR": str(tmp_path / "a")})
    second = serve_process(pg_url, env={"GRANTKEEPER_RECOVERY_DIR": str(tmp_path / "b")})
    with first.client() as on_first:
        assert sign_in(on_first, key).status_code == 303
        cookie = on_first.cookies["gk_console"]
        with second.client(cookies={"gk_console": cookie}) as on_second:
            page = on_second.get("/ui/grants")  # a session made by the first instance
            assert page.status_code == 200 and 'data-grant="acme-1"' in page.text
            assert on_second.post("/ui/logout", data={"csrf": csrf_of(page.text)}).status_code == 303
        refused = on_first.get("/ui/grants")  # signed out on the second instance
        assert refused.status_code == 303 and refused.headers["location"] == "/ui/login"
        # A new session, then the key is revoked behind both instances' backs.
        assert sign_in(on_first, key).status_code == 303
        cookie = on_first.cookies["gk_console"]
        with second.client(cookies={"gk_console": cookie}) as on_second:
            assert on_second.get("/ui/grants").status_code == 200
            revoke_key(pg_url, "ops")
            assert on_second.get("/ui/grants").status_code == 303
        assert on_first.get("/ui/grants").status_code == 303


def test_the_session_cookie_is_secure_on_a_tls_listener(serve_store: str, grant_on_sim: tuple[str, object],
                                                        serve_process: Start, tmp_path: Path) -> None:  # fmt: skip
    cert, key_file = _self_signed(tmp_path)
    key = make_key(serve_store, "ops", scopes="ui")
    server = serve_process(serve_store, "--host", "127.0.0.1", "--tls-cert", str(cert), "--tls-key", str(key_file))
    assert server.url.startswith("https://")
    with httpx.Client(base_url=server.url, verify=ssl.create_default_context(cafile=str(cert)), timeout=30) as http:
        form = http.get("/ui/login")
        login_cookie = form.headers["set-cookie"]
        assert login_cookie.startswith("gk_console_login=") and "; secure" in login_cookie.lower()
        signed_in = sign_in(http, key)
        assert signed_in.status_code == 303
        set_cookie = next(v for v in signed_in.headers.get_list("set-cookie") if v.startswith("gk_console="))
        assert {"secure", "httponly"} <= {a.strip().lower() for a in set_cookie.split(";")[1:]}
        assert http.get("/ui/grants").status_code == 200


def test_a_session_ends_at_its_expiry_and_ended_rows_are_swept(tmp_path: Path) -> None:
    store = open_store(f"sqlite://{tmp_path}/sessions.db")
    try:
        made = new_key("ops", grants="*", scopes="ui", now=time.time())
        store.create_api_key(made.record, key=made.key)
        sessions = SessionStore(store, ttl=60.0)
        now = time.time()
        cookie = sessions.create("ops", made.record.key_id, now=now)
        found = sessions.find(cookie, now=now + 59)
        assert found is not None and found.api_key == "ops" and found.scopes == {"ui"}
        assert sessions.find(cookie, now=now + 61) is None
        assert sessions.find(cookie + "x", now=now) is None
        # The key made again under the same name is another key: the old key's sessions do not carry over.
        revoke_key(f"sqlite://{tmp_path}/sessions.db", "ops")
        again = new_key("ops", grants="*", scopes="ui", now=time.time())
        store.create_api_key(again.record, key=again.key)
        assert sessions.find(cookie, now=now) is None
        # A sign-in deletes the rows of sessions that have ended; the table holds only the ones in force.
        signed_out = sessions.create("ops", again.record.key_id, now=now)
        sessions.end(signed_out, now=now)
        assert sessions.find(signed_out, now=now) is None

        def rows() -> int:
            return int(store._read(lambda c: c.execute("SELECT COUNT(*) FROM console_sessions").fetchone()[0]))

        kept = sessions.create("ops", again.record.key_id, now=now + 1)
        assert rows() == 2  # the signed-out row is gone; the first (its key made again) lasts until it expires
        sessions.create("ops", again.record.key_id, now=now + 60.5)  # the first has expired: gone too
        assert rows() == 2 and sessions.find(kept, now=now + 60.5) is not None
    finally:
        store.close()
