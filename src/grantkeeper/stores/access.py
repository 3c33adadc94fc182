"""Records of who may use the token broker (`grantkeeper serve`): API keys, the audit trail, connect sessions.

Plain data, stored by `SQLStore` (tables ``api_keys`` and ``audit``, schema version 7; ``connect_sessions``,
version 11). An API key's secret part is never stored: only a keyed hash of the whole key
(`SQLStore.api_key_digest`); a connect session's URL secret, ``state`` and browser cookie likewise.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from grantkeeper._exceptions import ConfigurationError

__all__ = [
    "SCOPES",
    "ApiKeyRecord",
    "AuditEntry",
    "ConnectSession",
    "check_pattern",
    "grant_matches",
    "parse_patterns",
    "parse_scopes",
]

#: What a key may do. ``ui`` signs in to the console (/ui/); ``connect`` creates hosted connect sessions
#: (``POST /v1/connect-sessions``).
SCOPES = ("token", "refresh", "proxy", "read", "metrics", "ui", "connect")
_PATTERN_CHARS = frozenset("-_.:@*")


def check_pattern(pattern: str) -> None:
    """A grant-name pattern is a grant name in which ``*`` matches any run of characters (none included)."""
    if not pattern or len(pattern) > 200 or not all(c.isalnum() or c in _PATTERN_CHARS for c in pattern):
        raise ConfigurationError(
            f"grant pattern {pattern!r} is not valid: use grant-name characters (letters, digits, - _ . : @) and * "
            "for any run of them, e.g. 'acme-*'"
        )


def grant_matches(grant: str, patterns: tuple[str, ...]) -> bool:
    """Does any pattern match the whole grant name?"""
    # Patterns hold no fnmatch metacharacter but ``*`` (check_pattern), so this is plain globbing.
    return any(fnmatch.fnmatchcase(grant, p) for p in patterns)


def parse_patterns(text: str) -> tuple[str, ...]:
    """``'acme-*,billing'`` -> ``('acme-*', 'billing')``, each checked; at least one."""
    patterns = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if not patterns:
        raise ConfigurationError("give at least one grant pattern, e.g. --grants 'acme-*,billing' ('*': every grant)")
    for pattern in patterns:
        check_pattern(pattern)
    return patterns


def parse_scopes(text: str) -> tuple[str, ...]:
    """``'token,read'`` -> ``('token', 'read')``, each a known scope; at least one."""
    scopes = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ConfigurationError(
            f"unknown scope {unknown[0][:40]!r}; scopes are {', '.join(SCOPES)}" if unknown
            else f"give at least one scope ({', '.join(SCOPES)})"
        )  # fmt: skip
    return scopes


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """An API key as stored: its name, public id, what it may reach, and its lifetime. Never the key itself."""

    name: str
    key_id: str
    grants: tuple[str, ...]
    scopes: tuple[str, ...]
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None

    def allows_grant(self, grant: str) -> bool:
        return grant_matches(grant, self.grants)

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name, "key_id": self.key_id, "grants": list(self.grants), "scopes": list(self.scopes),
            "created_at": self.created_at, "expires_at": self.expires_at, "revoked_at": self.revoked_at,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """Which key did what to which grant, when, and what it got: fingerprints only."""

    at: float
    api_key: str
    action: str
    grant: str | None
    status: int
    fingerprint: str | None = None
    generation: int | None = None
    detail: str | None = None
    id: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "at": self.at, "api_key": self.api_key, "action": self.action, "grant": self.grant,
                "status": self.status, "fingerprint": self.fingerprint, "generation": self.generation,
                "detail": self.detail}  # fmt: skip


@dataclass(frozen=True, slots=True)
class ConnectSession:
    """A hosted connect session as stored: which grant it makes, and how far it got. Never a secret: the URL's
    secret, the ``state`` and the browser cookie are stored as keyed hashes, the verifier sealed (read separately,
    `SQLStore.take_connect_callback`)."""

    id: str
    grant: str
    provider: str
    scopes: tuple[str, ...]
    replace: bool
    api_key: str
    created_at: float
    expires_at: float
    opened_at: float | None = None
    callback_by: float | None = None
    redirect_uri: str | None = None
    finished_at: float | None = None
    outcome: str | None = None
