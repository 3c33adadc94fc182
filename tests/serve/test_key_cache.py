"""API keys are checked against the store on every request, through `KeyCache`: a record read once is used again
only while the store's change probe says nothing was committed since. Proven here: a revocation by another
process (the ``apikey revoke`` CLI) is refused by every instance on its very next request; the cache does serve
repeated requests without a store read; expiry is checked on every request, a cached record's included."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.requests import Request

from grantkeeper.serve.apikeys import KeyCache, new_key
from grantkeeper.serve.auth import Authenticator
from grantkeeper.serve.errors import ServeError
from grantkeeper.serve.ratelimit import RateLimiter
from grantkeeper.stores import SQLStore, open_store
from tests.serve.conftest import ServeProcess, make_key

Start = Callable[..., ServeProcess]


def _revoke_by_cli(store_url: str, name: str) -> None:
    subprocess.run([sys.executable, "-m", "grantkeeper", "--store", store_url, "apikey", "revoke", name],
                   capture_output=True, text=True, timeout=60, check=True)  # fmt: skip


def test_a_cli_revocation_is_refused_by_every_instance_on_its_next_request(
    grant_on_sim: tuple[str, object], serve_process: Start
) -> None:
    store_url, _ = grant_on_sim
    key = make_key(store_url, "fleet", grants="acme-*", scopes="token")
    env = {"GRANTKEEPER_SERVE_RATE": "0"}
    instances = [serve_process(store_url, env=env), serve_process(store_url, env=env)]
    for server in instances:
        with server.client(key) as http:
            for _ in range(5):  # the key's record is read once, then kept
                assert http.get("/v1/grants/acme-1/token").status_code == 200
    _revoke_by_cli(store_url, "fleet")
    for server in instances:
        with server.client(key) as http:
            refused = http.get("/v1/grants/acme-1/token")
        assert refused.status_code == 401 and "revoked" in refused.json()["detail"], refused.text


@pytest.fixture
def file_store(tmp_path: Path) -> SQLStore:
    store = open_store(f"sqlite://{tmp_path}/keys.db")
    yield store  # type: ignore[misc]
    store.close()


def _add_key(store: SQLStore, name: str, *, lifetime: float | None = None) -> str:
    made = new_key(name, grants="*", scopes="token", now=time.time(), lifetime=lifetime)
    store.create_api_key(made.record, key=made.key)
    return made.key


def test_a_kept_record_is_used_until_the_store_changes(file_store: SQLStore, tmp_path: Path) -> None:
    key = _add_key(file_store, "app")
    cache = KeyCache(file_store)

    async def scenario() -> None:
        for _ in range(3):
            record = await cache.authenticate(key)
            assert record is not None and record.name == "app" and record.revoked_at is None
        assert cache.reads == 1  # served from the kept record twice
        assert await cache.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None  # the secret is checked
        file_store.revoke_api_key("app", now=time.time())  # this process, another connection
        revoked = await cache.authenticate(key)
        assert revoked is not None and revoked.revoked_at is not None and cache.reads == 2

        other = _add_key(file_store, "other")
        assert (await cache.authenticate(other)) is not None
        reads = cache.reads
        _revoke_by_cli(f"sqlite://{tmp_path}/keys.db", "other")  # another process
        gone = await cache.authenticate(other)
        assert gone is not None and gone.revoked_at is not None and cache.reads == reads + 1

    asyncio.run(scenario())


def test_a_store_without_a_probe_is_read_on_every_request() -> None:
    store = open_store("memory://")
    try:
        key = _add_key(store, "app")
        cache = KeyCache(store)

        async def scenario() -> None:
            for _ in range(3):
                assert await cache.authenticate(key) is not None
            store.revoke_api_key("app", now=time.time())
            revoked = await cache.authenticate(key)
            assert revoked is not None and revoked.revoked_at is not None

        asyncio.run(scenario())
        assert cache.reads == 4
    finally:
        store.close()


def test_expiry_is_checked_on_every_request_a_kept_record_included(file_store: SQLStore) -> None:
    lifetime = 3.0
    key = _add_key(file_store, "brief", lifetime=lifetime)
    auth = Authenticator(file_store, RateLimiter(0, 0))
    request = Request({"type": "http", "method": "GET", "path": "/", "query_string": b"",
                       "headers": [(b"authorization", f"Bearer {key}".encode())]})  # fmt: skip
    expires_at = file_store.find_api_key(key.split("_")[1])[0].expires_at  # type: ignore[index]

    async def scenario() -> None:
        assert (await auth.caller(request)).name == "brief"
        while time.time() <= expires_at + 0.1:
            await asyncio.sleep(0.2)
        with pytest.raises(ServeError) as refused:
            await auth.caller(request)
        assert refused.value.status == 401 and "expired" in refused.value.detail
        assert auth._keys.reads == 1  # the kept record was used: the store did not change

    asyncio.run(scenario())


def test_requests_after_one_change_share_one_read_and_a_later_change_gets_its_own(file_store: SQLStore) -> None:
    """After a commit, every request in flight finds the store changed: they share one store read begun after the
    probe value they all saw, but a request that probes after a further commit (a revocation) waits for a read
    of its own, so the revocation is still refused at once."""
    key = _add_key(file_store, "app")
    cache = KeyCache(file_store)
    gate = threading.Event()
    read = file_store.find_api_key

    def held_read(key_id: str) -> object:
        gate.wait(30)
        return read(key_id)

    async def scenario() -> None:
        file_store.find_api_key = held_read  # type: ignore[method-assign]
        together = [asyncio.ensure_future(cache.authenticate(key)) for _ in range(16)]
        await asyncio.sleep(0.05)  # all sixteen have probed and wait on the one read
        assert cache.reads == 1
        file_store.revoke_api_key("app", now=time.time())
        after = asyncio.ensure_future(cache.authenticate(key))
        await asyncio.sleep(0.05)
        assert cache.reads == 2
        gate.set()
        records = await asyncio.gather(*together)
        assert all(r is not None and r.name == "app" for r in records)
        revoked = await after
        assert revoked is not None and revoked.revoked_at is not None

    asyncio.run(scenario())
