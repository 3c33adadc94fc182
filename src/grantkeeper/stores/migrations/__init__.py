"""Versioned, forward-only schema migrations, one SQL file per version and backend.

A store records its version; opening checks it against the newest file shipped with this code. A newer
store is refused (this code would misread it); an older one is refused with the command that upgrades it.
Neither is changed silently.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["latest_version", "migrations"]


def migrations(backend: str) -> list[tuple[int, str]]:
    """(version, sql) pairs in order for `backend` ("sqlite")."""
    folder = resources.files(__package__).joinpath(backend)
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    found.sort()
    if [v for v, _ in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{backend} migrations are not numbered 1..N without gaps")
    return found


def latest_version(backend: str) -> int:
    return len(migrations(backend))
