"""Redaction for Sentry: ``before_send`` and ``before_breadcrumb`` callbacks.

They scrub the whole event (exception values, stack frame variables, request headers, cookies and query
strings, breadcrumbs, extra data) with the rules of `grantkeeper.redact.scrub`::

    import sentry_sdk
    from grantkeeper.redact.sentry import before_breadcrumb, before_send

    sentry_sdk.init(dsn=..., before_send=before_send, before_breadcrumb=before_breadcrumb)
"""

from __future__ import annotations

from typing import Any

from grantkeeper.redact._core import scrub
from grantkeeper.redact._optional import missing_extra

try:
    import sentry_sdk  # noqa: F401  (the helper is for Sentry users: fail early and clearly without it)
except ImportError as exc:
    raise missing_extra("grantkeeper.redact.sentry", "sentry-sdk", "sentry") from exc

__all__ = ["before_breadcrumb", "before_send"]


def before_send(event: dict[str, Any], _hint: dict[str, Any]) -> dict[str, Any]:
    """A scrubbed copy of the event; Sentry sends what this returns."""
    cleaned: dict[str, Any] = scrub(event)
    return cleaned


def before_breadcrumb(crumb: dict[str, Any], _hint: dict[str, Any]) -> dict[str, Any]:
    """A scrubbed copy of the breadcrumb (httpx and logging breadcrumbs carry URLs and messages)."""
    cleaned: dict[str, Any] = scrub(crumb)
    return cleaned
