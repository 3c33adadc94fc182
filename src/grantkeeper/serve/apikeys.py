"""API keys of the token broker: how they look, how they are made and how a presented one is checked.

A key is ``gk_<id>_<secret>``: the id (12 hex digits) finds the stored record, the secret (32 random bytes,
base64url) proves possession. The store keeps a keyed hash of the whole key (`SQLStore.api_key_digest`), compared
with `hmac.compare_digest`; the key itself is printed once by ``grantkeeper apikey create`` and kept nowhere.
Keys are checked against the store on every request, so a revocation takes effect at once on every instance that
shares the store. `KeyCache` makes that cheap without weakening it: it keeps the records it read, each with the
value the store's change probe (`SQLStore.change_probe`; SQLite: ``PRAGMA data_version``) had just before the read,
and uses one only while the probe still returns that value: any commit to the store since, by any process (an
``apikey revoke`` included), sends the next request back to the store. Stores without a probe are read every time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass

from grantkeeper.stores import SQLStore
from grantkeeper.stores.access import ApiKeyRecord, parse_patterns, parse_scopes

__all__ = ["DEFAULT_SCOPES", "KeyCache", "NewKey", "authenticate", "new_key", "parse_key"]

DEFAULT_SCOPES = ("token", "read")
_KEY = re.compile(r"gk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key just made: the record to store and the key to show once."""

    record: ApiKeyRecord
    key: str

    def __repr__(self) -> str:  # the key never appears in a repr
        return f"NewKey(record={self.record!r})"


def new_key(
    name: str, *, grants: str, scopes: str = ",".join(DEFAULT_SCOPES), now: float, lifetime: float | None = None
) -> NewKey:
    """A fresh key for `name` reaching `grants` (patterns) with `scopes`, expiring `lifetime` seconds from `now`."""
    key_id = secrets.token_hex(6)
    key = f"gk_{key_id}_{secrets.token_urlsafe(32)}"
    record = ApiKeyRecord(name=name, key_id=key_id, grants=parse_patterns(grants), scopes=parse_scopes(scopes),
                          created_at=now, expires_at=None if lifetime is None else now + lifetime)  # fmt: skip
    return NewKey(record, key)


def parse_key(presented: str) -> str | None:
    """The public id of a well-formed key; None for anything else."""
    match = _KEY.fullmatch(presented)
    return match.group(1) if match else None


def authenticate(store: SQLStore, presented: str) -> ApiKeyRecord | None:
    """The record of the key `presented` is, whatever its state (revoked, expired); None if it is no key of ours.

    Runs one store read; call it from a worker thread in async code.
    """
    key_id = parse_key(presented)
    return None if key_id is None else _check(store, presented, store.find_api_key(key_id))


def _check(store: SQLStore, presented: str, found: tuple[ApiKeyRecord, str] | None) -> ApiKeyRecord | None:
    if found is None:
        # Hash anyway, so an unknown id costs what a known one does.
        store.api_key_digest(presented)
        return None
    record, digest = found
    return record if hmac.compare_digest(store.api_key_digest(presented), digest) else None


class KeyCache:
    """`authenticate` for an event loop: a stored record is read again (in a worker thread) only when the store
    has changed since it was read (see the module docstring). Use it from one event loop's thread only."""

    def __init__(self, store: SQLStore) -> None:
        self._store = store
        self._probe = store.change_probe()
        # key id -> (the probe's value just before the read, the record and its stored hash). Only keys found in
        # the store are kept, so the size is bounded by the store's keys; an entry whose value is stale is
        # replaced at its key's next request.
        self._seen: dict[str, tuple[object, tuple[ApiKeyRecord, str], bytes | None]] = {}
        # A key the store's hash accepted is remembered by a MAC (keyed BLAKE2b) under a key of this process only:
        # checking it again costs one MAC, not the store's key derivation. The key itself is kept nowhere.
        self._local = os.urandom(32)
        # key id -> (the probe's value, the read begun just after it), while that read is running.
        self._reading: dict[str, tuple[object, asyncio.Future[tuple[ApiKeyRecord, str] | None]]] = {}
        self.reads = 0  # store reads made, for tests

    async def authenticate(self, presented: str) -> ApiKeyRecord | None:
        """The record of the key `presented` is, whatever its state (revoked, expired); None if it is no key of
        ours. Expiry and revocation are the caller's to check, on every request."""
        key_id = parse_key(presented)
        if key_id is None:
            return None
        if self._probe is None:
            self.reads += 1
            return await asyncio.to_thread(authenticate, self._store, presented)
        version = self._probe()  # before the read: a commit after this point changes the next probe's value
        kept = self._seen.get(key_id)
        if kept is not None and kept[0] == version:
            if kept[2] is not None and hmac.compare_digest(self._mark(presented), kept[2]):
                return kept[1][0]
            return _check(self._store, presented, kept[1])
        found = await self._read(key_id, version)
        record = _check(self._store, presented, found)
        if found is None:
            self._seen.pop(key_id, None)
        else:
            self._seen[key_id] = (version, found, None if record is None else self._mark(presented))
        return record

    async def _read(self, key_id: str, version: object) -> tuple[ApiKeyRecord, str] | None:
        """The stored record of `key_id`, read after the probe gave `version`. Requests that find the store
        changed at the same moment (every request in flight, after any commit) share one read begun after that
        same probe value, rather than one worker-thread trip each."""
        pending = self._reading.get(key_id)
        if pending is None or pending[0] != version:
            self.reads += 1
            task = asyncio.ensure_future(asyncio.to_thread(self._store.find_api_key, key_id))
            pending = self._reading[key_id] = (version, task)
            task.add_done_callback(lambda done: self._forget_read(key_id, done))
        # Shielded: a caller that goes away (its client disconnected) does not cancel the others' read.
        return await asyncio.shield(pending[1])

    def _forget_read(self, key_id: str, done: asyncio.Future[tuple[ApiKeyRecord, str] | None]) -> None:
        pending = self._reading.get(key_id)
        if pending is not None and pending[1] is done:
            del self._reading[key_id]
        if not done.cancelled():
            done.exception()  # retrieved: a failed read is raised to its awaiters, not logged as never seen

    def _mark(self, presented: str) -> bytes:
        # Keyed BLAKE2b: a MAC in one C call, where hmac.new takes several Python-level steps.
        return hashlib.blake2b(presented.encode(), key=self._local, digest_size=32).digest()
