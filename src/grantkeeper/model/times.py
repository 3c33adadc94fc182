"""Times as grantkeeper shows them: ISO 8601 UTC to the second, the form logs and providers use."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["iso_utc"]


def iso_utc(ts: float) -> str:
    """Epoch seconds as ISO 8601 UTC, to the second: ``2026-01-31T12:00:00Z``."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
