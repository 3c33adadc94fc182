"""Console sessions: made at sign-in with an API key that has the ``ui`` scope, kept server-side in the store.

Why server-side rather than a signed cookie: sign-out and key revocation must end a session at once on every
instance sharing the store. A signed cookie would need a revocation list in the store anyway, read on every
request; a session row is that same read, and it also lets an operator see and end sessions with SQL.

The cookie holds 32 random bytes (base64url); the store keeps only their SHA-256 (``console_sessions.id_hash``),
with the key's name and public id. Every request looks the session up joined to its key, so a session ends when
it expires, when it is signed out, or when its key is revoked, expires or loses the ``ui`` scope. The CSRF token
of a session's forms is an HMAC of the cookie (`csrf_token`): it is tied to the session, needs no storage, and
reveals nothing about the cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from grantkeeper.stores import SQLStore
from grantkeeper.stores.transactions import Op, Sql

__all__ = ["SESSION_TTL", "ConsoleSession", "SessionStore", "csrf_token", "csrf_valid"]

#: How long a console session lasts from sign-in (an operator's working day); then sign in again.
SESSION_TTL = 8 * 3600.0
_CSRF = b"grantkeeper console csrf"


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A signed-in operator: the API key's name and what it reaches."""

    api_key: str
    grants: tuple[str, ...]
    scopes: frozenset[str]
    expires_at: float


def _digest(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


def csrf_token(cookie: str) -> str:
    """The CSRF token of the session whose cookie is `cookie` (goes into every form that changes state)."""
    return hmac.new(cookie.encode(), _CSRF, hashlib.sha256).hexdigest()


def csrf_valid(cookie: str | None, presented: str | None) -> bool:
    return bool(cookie) and bool(presented) and hmac.compare_digest(csrf_token(cookie or ""), presented or "")


def _create(_store: SQLStore, id_hash: str, api_key: str, key_id: str, now: float, ttl: float) -> Op[None]:
    # Ended sessions (expired, signed out) are swept at each sign-in: the table stays as small as those in force.
    yield Sql("DELETE FROM console_sessions WHERE expires_at < ? OR revoked_at IS NOT NULL", (now,), wait=False)
    yield Sql(
        "INSERT INTO console_sessions (id_hash, api_key, key_id, created_at, expires_at, revoked_at) "
        "VALUES (?, ?, ?, ?, ?, NULL)",
        (id_hash, api_key, key_id, now, now + ttl),
        wait=False,
    )


def _find(_store: SQLStore, id_hash: str, now: float) -> Op[ConsoleSession | None]:
    row = (
        yield Sql(
            "SELECT s.api_key, k.grants, k.scopes, s.expires_at FROM console_sessions s JOIN api_keys k "
            "ON k.name = s.api_key AND k.key_id = s.key_id WHERE s.id_hash = ? AND s.revoked_at IS NULL "
            "AND s.expires_at > ? AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > ?)",
            (id_hash, now, now),
        )
    ).fetchone()
    if row is None:
        return None
    scopes = frozenset(s for s in str(row[2]).split(",") if s)
    return ConsoleSession(str(row[0]), tuple(str(row[1]).split(",")), scopes, float(row[3]))


def _end(_store: SQLStore, id_hash: str, now: float) -> Op[None]:
    yield Sql("UPDATE console_sessions SET revoked_at = ? WHERE id_hash = ? AND revoked_at IS NULL",
              (now, id_hash), wait=False)  # fmt: skip


class SessionStore:
    """The console's sessions in `store` (blocking calls: run them in a worker thread)."""

    def __init__(self, store: SQLStore, *, ttl: float = SESSION_TTL) -> None:
        self._store, self.ttl = store, ttl

    def create(self, api_key: str, key_id: str, *, now: float) -> str:
        """A new session for API key `api_key` (public id `key_id`); returns the cookie (given to the browser
        once, stored only as a hash)."""
        cookie = secrets.token_urlsafe(32)
        self._store._perform(_create, True, _digest(cookie), api_key, key_id, now, self.ttl)
        return cookie

    def find(self, cookie: str, *, now: float) -> ConsoleSession | None:
        """The session in force for `cookie`; None when unknown, expired, signed out, or its key no longer
        usable. Whether the key still has the ``ui`` scope is the caller's to check."""
        return self._store._perform(_find, False, _digest(cookie), now)

    def end(self, cookie: str, *, now: float) -> None:
        """Sign out: the cookie is refused from now on, by every instance."""
        self._store._perform(_end, True, _digest(cookie), now)
