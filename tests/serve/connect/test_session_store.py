"""The connect sessions in each SQL store (SQLite, PostgreSQL): a link opens once and a callback is taken once,
even when many requests race for it; a wrong URL secret or ``state`` finds nothing; the verifier comes back only
to the one callback that takes the session, and is stored sealed (not in plaintext)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from grantkeeper import Secret
from grantkeeper.stores import SQLStore, open_store
from grantkeeper.stores.access import ConnectSession
from tests.conftest import TEST_KEY

RACERS = 8


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("GRANTKEEPER_KEY", TEST_KEY)  # a database server has no key file beside it
    monkeypatch.setenv("GRANTKEEPER_RECOVERY_DIR", f"{tmp_path}/recovery")
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/s.db"
    url: str = request.getfixturevalue("pg_url")
    open_store(url, migrate=True).close()  # PostgreSQL: migrations 1-9, the connect sessions' included
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[SQLStore]:
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.close()


def _session(session_id: str = "0123456789abcdef", *, now: float = 1000.0) -> ConnectSession:
    return ConnectSession(id=session_id, grant="acme-1", provider="dot", scopes=("read", "write"), replace=False,
                          api_key="platform", created_at=now, expires_at=now + 600)  # fmt: skip


def _open(store: SQLStore, *, token: str = "tok", state: str = "st", now: float = 1001.0) -> tuple[object, object]:
    return store.open_connect_session("0123456789abcdef", token=token, state=state, browser="cookie",
                                      verifier=Secret("the-verifier-" + "v" * 60), redirect_uri="http://x/cb",
                                      now=now, callback_by=now + 600)  # fmt: skip


def test_a_session_opens_once_and_its_callback_is_taken_once(store: SQLStore) -> None:
    store.create_connect_session(_session(), token="tok")
    assert store.get_connect_session("0123456789abcdef", token="other") is None
    assert _open(store, token="other") == (None, "unknown")
    opened, why = _open(store)
    assert why is None and opened is not None
    assert _open(store)[1] == "used"
    take = store.take_connect_callback
    assert take("0123456789abcdef", state="wrong", browser="cookie", now=1002.0) == (None, None, "unknown")
    assert take("0123456789abcdef", state="st", browser="other", now=1002.0)[2] == "other_browser"
    session, verifier, why = take("0123456789abcdef", state="st", browser="cookie", now=1002.0)
    assert why is None and verifier is not None and verifier.reveal() == "the-verifier-" + "v" * 60
    assert session is not None and session.finished_at == 1002.0
    assert take("0123456789abcdef", state="st", browser="cookie", now=1003.0) == (session, None, "used")
    store.finish_connect_session("0123456789abcdef", outcome="connected")
    final = store.get_connect_session("0123456789abcdef")
    assert final is not None and final.outcome == "connected"


def test_an_unopened_link_expires_and_a_late_callback_ends_the_session(store: SQLStore) -> None:
    store.create_connect_session(_session(), token="tok")
    assert _open(store, now=1600.0)[1] == "expired"
    assert _open(store, now=1599.0)[1] is None
    late = store.take_connect_callback("0123456789abcdef", state="st", browser=None, now=1599.0 + 600)
    assert late[2] == "expired" and late[1] is None
    again = store.take_connect_callback("0123456789abcdef", state="st", browser="cookie", now=1000.0)
    assert again[2] == "expired"  # over for good, whatever clock the next request reads


def _race(url: str, call: Callable[[SQLStore], object]) -> list[str]:
    """`call` on RACERS stores of their own (as many broker instances have), released at once; what each
    returned."""
    stores = [open_store(url) for _ in range(RACERS)]
    barrier, results = threading.Barrier(RACERS), []

    def run(store: SQLStore) -> None:
        barrier.wait()
        results.append(str(call(store)))

    threads = [threading.Thread(target=run, args=(store,)) for store in stores]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        for store in stores:
            store.close()
    return sorted(results)


def test_racing_opens_and_callbacks_each_have_one_winner(store: SQLStore, store_url: str) -> None:
    store.create_connect_session(_session(), token="tok")
    assert _race(store_url, lambda s: _open(s)[1]) == ["None"] + ["used"] * (RACERS - 1)
    won = _race(store_url, lambda s: s.take_connect_callback("0123456789abcdef", state="st", browser="cookie",
                                                              now=1002.0)[2])  # fmt: skip
    assert won == ["None"] + ["used"] * (RACERS - 1)


def test_the_verifier_and_the_secrets_are_not_stored_in_plaintext(tmp_path: Path) -> None:
    store = open_store(f"sqlite://{tmp_path}/s.db")
    try:
        store.create_connect_session(_session(), token="the-url-secret-token")
        store.open_connect_session("0123456789abcdef", token="the-url-secret-token", state="the-state-value",
                                   browser="the-browser-cookie", verifier=Secret("the-verifier-" + "v" * 60),
                                   redirect_uri="http://x/cb", now=1001.0, callback_by=1601.0)  # fmt: skip
    finally:
        store.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    for secret in ("the-url-secret-token", "the-state-value", "the-browser-cookie", "the-verifier-"):
        assert secret.encode() not in stored
