"""API-key records kept on PostgreSQL too: `KeyCache` over `PostgresStore.change_probe`, which counts the NOTIFY
that ``create_api_key`` and ``revoke_api_key`` send inside their transaction. Proven here on a real server:
repeated requests are served without a store read; a revocation by another process is refused on a following
request by two ``serve`` instances; and a revocation whose notification was lost (the listener's connection
killed first) is still refused, because a record kept from before a lost connection is never used again.

NOTIFY is delivered after the revoking transaction commits, so "refused" is awaited with a deadline, never by a
sleep: the deadline is only a bound for a hung test.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable

import psycopg
import pytest

from grantkeeper import Keeper
from grantkeeper.serve.apikeys import KeyCache, new_key
from grantkeeper.stores import SQLStore, open_store
from tests.conftest import TEST_KEY
from tests.helpers import add_grant
from tests.serve.conftest import ServeProcess, make_key

Start = Callable[..., ServeProcess]
DEADLINE = 30.0


@pytest.fixture
def pg_store(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> SQLStore:
    monkeypatch.setenv("GRANTKEEPER_KEY", TEST_KEY)
    store = open_store(pg_url, migrate=True)
    yield store  # type: ignore[misc]
    store.close()


def _add_key(store: SQLStore, name: str) -> str:
    made = new_key(name, grants="*", scopes="token", now=time.time())
    store.create_api_key(made.record, key=made.key)
    return made.key


def _revoke_by_cli(store_url: str, name: str) -> None:
    subprocess.run([sys.executable, "-m", "grantkeeper", "--store", store_url, "apikey", "revoke", name],
                   capture_output=True, text=True, timeout=60, check=True)  # fmt: skip


async def _until_revoked(cache: KeyCache, key: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while True:
        record = await cache.authenticate(key)
        assert record is not None
        if record.revoked_at is not None:
            return
        assert time.monotonic() < deadline, "the revoked key was still accepted at the deadline"
        await asyncio.sleep(0.01)


async def _until_kept(cache: KeyCache, key: str) -> None:
    """Until the listener is connected: two requests in a row served by one store read."""
    deadline = time.monotonic() + DEADLINE
    while True:
        await cache.authenticate(key)
        reads = cache.reads
        assert await cache.authenticate(key) is not None
        if cache.reads == reads:
            return
        assert time.monotonic() < deadline, "the key's record was read from the store on every request"
        await asyncio.sleep(0.01)


def test_a_kept_record_is_used_until_a_key_change_is_announced(pg_store: SQLStore, pg_url: str) -> None:
    key = _add_key(pg_store, "app")
    cache = KeyCache(pg_store)

    async def scenario() -> None:
        await _until_kept(cache, key)
        reads = cache.reads
        for _ in range(5):
            record = await cache.authenticate(key)
            assert record is not None and record.name == "app" and record.revoked_at is None
        assert cache.reads == reads  # no store read: the probe said no key changed
        assert await cache.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None  # the secret is checked
        _revoke_by_cli(pg_url, "app")  # another process
        await _until_revoked(cache, key)
        assert cache.reads > reads

    asyncio.run(scenario())


def test_a_revocation_whose_notification_was_lost_is_still_refused(pg_store: SQLStore, pg_url: str) -> None:
    key = _add_key(pg_store, "app")
    cache = KeyCache(pg_store)

    async def scenario() -> None:
        await _until_kept(cache, key)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                                   "current_database() AND query ILIKE 'LISTEN%'").fetchall()  # fmt: skip
            assert killed and all(row[0] for row in killed)
            # Committed while no listener is connected (it reconnects after a back-off): nobody hears this NOTIFY.
            pg_store.revoke_api_key("app", now=time.time())
        await _until_revoked(cache, key)

    asyncio.run(scenario())


@pytest.mark.slow
def test_a_revocation_is_refused_by_two_instances_on_one_postgres(pg_url: str, make_sim: Callable[..., object],
                                                                  serve_process: Start,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("GRANTKEEPER_KEY", TEST_KEY)
    open_store(pg_url, migrate=True).close()
    with Keeper.open(pg_url) as keeper:
        add_grant(keeper, make_sim(), grant="acme-1")
    key = make_key(pg_url, "fleet", grants="acme-*", scopes="token")
    env = {"GRANTKEEPER_SERVE_RATE": "0"}
    instances = [serve_process(pg_url, env=env), serve_process(pg_url, env=env)]
    for server in instances:
        with server.client(key) as http:
            for _ in range(5):
                assert http.get("/v1/grants/acme-1/token").status_code == 200
    _revoke_by_cli(pg_url, "fleet")
    for server in instances:
        deadline = time.monotonic() + DEADLINE
        with server.client(key) as http:
            while (answer := http.get("/v1/grants/acme-1/token")).status_code == 200:
                assert time.monotonic() < deadline, "an instance still served the revoked key at the deadline"
                time.sleep(0.01)
        assert answer.status_code == 401 and "revoked" in answer.json()["detail"], answer.text
