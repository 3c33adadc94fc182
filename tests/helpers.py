"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from grantkeeper import Keeper, Provider, RefreshPolicy, RotationMode, Secret
from grantkeeper import _failpoints as failpoints

#: The provider columns schema version 6 added: tests that build an older store drop them.
MIGRATION_6_COLUMNS = ("authorize_params", "api_base_url", "ca_bundle", "proxy", "insecure_http")
#: The grants columns schema version 9 added (the refresh scheduler's), dropped by `drop_schedule_columns`.
MIGRATION_9_COLUMNS = ("hot", "last_used_at", "next_due_at", "warned_at")


def drop_schedule_columns(execute: Callable[[str], object]) -> None:
    """Undo schema version 9 with `execute` (an sqlite3 or psycopg connection's): its index, then its columns.
    Tests that build an older store call it; the later versions only create tables and indexes if missing."""
    execute("DROP INDEX grants_next_due")
    for column in MIGRATION_9_COLUMNS:
        execute(f"ALTER TABLE grants DROP COLUMN {column}")


#: Short enough that crash tests wait little for a dead holder; long enough for a loopback request.
FAST_POLICY = RefreshPolicy(
    lease_ttl=3.0, request_timeout=1.0, wait_timeout=30.0, backoff_base=0.01, backoff_cap=0.05, deadline=10.0
)


def provider_for(sim: object, *, name: str = "sim", rotation: str = "always", grace: float = 0.0,
                 skew: float = 30.0) -> Provider:  # fmt: skip
    return Provider(
        name=name,
        token_url=sim.url,  # type: ignore[attr-defined]
        client_id=sim.client_id,  # type: ignore[attr-defined]
        client_secret=Secret(sim.client_secret),  # type: ignore[attr-defined]
        rotation=RotationMode(rotation),
        reuse_grace=grace,
        skew=skew,
    )


def setup_grant(store_url: str, sim: object, *, grant: str = "g", **provider_options: object) -> str:
    """Add a provider for `sim` and import a fresh grant into the store; returns the refresh token."""
    refresh = sim.issue_grant()  # type: ignore[attr-defined]
    with Keeper.open(store_url) as keeper:
        keeper.add_provider(provider_for(sim, **provider_options))  # type: ignore[arg-type]
        keeper.import_grant(grant, provider="sim", refresh_token=refresh)
    return str(refresh)


def files_bytes(directory: Path) -> bytes:
    """Every byte of every file under `directory` (store, WAL, shm, recovery files)."""
    data = b""
    for root, _, names in os.walk(directory):
        for n in names:
            data += Path(root, n).read_bytes()
    return data


def add_grant(keeper: Keeper, sim: object, *, grant: str = "g", **provider_options: object) -> str:
    """Add a provider for `sim` and import a fresh grant through an open keeper; returns the refresh token."""
    refresh = str(sim.issue_grant())  # type: ignore[attr-defined]
    keeper.add_provider(provider_for(sim, **provider_options))  # type: ignore[arg-type]
    keeper.import_grant(grant, provider="sim", refresh_token=refresh)
    return refresh


def resource_ok(sim: object, access_token: str) -> bool:
    """Does the simulator's resource server accept this access token?"""
    import httpx

    response = httpx.get(sim.base_url + "/resource", headers={"Authorization": f"Bearer {access_token}"})  # type: ignore[attr-defined]
    return response.status_code == 200


@contextlib.contextmanager
def store_locked_at(db: Path, failpoint: str = "before_commit") -> Iterator[None]:
    """Inside the block, the SQLite store `db` is locked exclusively from the moment a refresh reaches `failpoint`
    (the store then cannot be written: the successor goes to recovery storage); the lock ends with the block."""
    held: list[sqlite3.Connection] = []

    def lock() -> None:
        failpoints.clear_hooks()
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        held.append(blocker)

    failpoints.set_hook(failpoint, lock)
    try:
        yield
    finally:
        failpoints.clear_hooks()
        for blocker in held:
            blocker.execute("ROLLBACK")
            blocker.close()


def accept_forever(listener: object, handle: object) -> None:
    """Serve each connection `listener` (a listening socket) accepts in a thread of its own, with
    `handle(conn)`, until the listener is closed."""
    import threading

    while True:
        try:
            conn, _ = listener.accept()  # type: ignore[attr-defined]
        except OSError:
            return
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def read_request(conn: object, buffered: bytes = b"") -> tuple[bytes, bytes, bytes] | None:
    """Read one HTTP request from socket `conn` (after `buffered`, bytes already read): its head (without the blank
    line), its body (``Content-Length`` bytes; none without the header) and what was read past it; None if the
    client hung up before the head ended."""
    while b"\r\n\r\n" not in buffered:
        chunk = conn.recv(65536)  # type: ignore[attr-defined]
        if not chunk:
            return None
        buffered += chunk
    head, _, buffered = buffered.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
    while len(buffered) < length:
        buffered += conn.recv(65536)  # type: ignore[attr-defined]
    return head, buffered[:length], buffered[length:]


def read_form_request(conn: object, buffered: bytes = b"") -> tuple[dict[str, str], bytes] | None:
    """Read one HTTP request with a form body from socket `conn` (after `buffered`, bytes already read): its form
    fields (first value of each) and what was read past it; None if the client hung up first."""
    import urllib.parse

    request = read_request(conn, buffered)
    if request is None:
        return None
    _, body, rest = request
    return {k: v[0] for k, v in urllib.parse.parse_qs(body.decode()).items()}, rest


def revoke_at_provider(store_url: str, grant: str, sim: Any) -> None:
    """Revoke the token family of `grant`'s stored refresh token at simulator `sim`, behind the keeper's back: its
    next refresh fails as a revoked grant does."""
    from grantkeeper.stores import open_store

    store = open_store(store_url)
    try:
        current = store.get_grant(grant).refresh_token
        assert current is not None
        sim.revoke_family(current.reveal())
    finally:
        store.close()
