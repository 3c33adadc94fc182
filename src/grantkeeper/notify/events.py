"""Events a person must act on, and the callbacks and webhook that hear of them.

Two kinds, each sent when a grant enters it (not on every later call that repeats it):

* ``needs_reauth``: this worker's refresh found the grant dead (lost_in_flight, reuse_detected,
  revoked_or_expired). Only the worker whose refresh marked the grant dead sends it, so many processes and
  hosts sharing a store send one event per death.
* ``client_auth_failed``: the provider rejected the client credentials, and the grant's previous attempt had
  not already failed that way.
* ``refresh_token_ending``: the refresh scheduler (`grantkeeper.engine.scheduler`) saw the grant's refresh token
  come within its warning time of an absolute end, which only a new consent renews (once per planned warning).

Two more come from ``grantkeeper serve``'s hosted connect (`grantkeeper.serve.connect_sessions`), one per session
that got as far as the provider's answer: ``connected`` (the grant is stored) and ``connect_failed`` (it is not;
the cause is the error's code).

An event carries names, classes, fingerprints, ids and times: never a token or a secret.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from grantkeeper._exceptions import ClientAuthFailed, GrantkeeperError, NeedsReauth

__all__ = ["EVENT_KINDS", "EventSink", "GrantEvent", "Notifier", "event_for"]

logger = logging.getLogger("grantkeeper")

EVENT_KINDS = ("needs_reauth", "client_auth_failed", "refresh_token_ending", "connected", "connect_failed")


@dataclass(frozen=True, slots=True)
class GrantEvent:
    """Something happened to a grant that a person must act on."""

    kind: str  # one of EVENT_KINDS
    grant: str
    provider: str
    # the error class (lost_in_flight, ..., client_auth_failed, consent_denied, ...), "connected", or
    # absolute_lifetime for refresh_token_ending
    cause: str
    message: str  # the error's message: what happened and what to do (no secrets)
    evidence: dict[str, Any]
    at: float
    worker: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "grant": self.grant, "provider": self.provider, "cause": self.cause,
            "message": self.message, "evidence": self.evidence, "at": self.at, "worker": self.worker,
        }  # fmt: skip


#: Called with each event; exceptions are logged and swallowed (a broken hook must not hide the grant's error).
EventSink = Callable[[GrantEvent], None]


def event_for(error: GrantkeeperError, *, provider: str, at: float, worker: str, repeat: bool) -> GrantEvent | None:
    """The event `error` announces, or None. `repeat`: the grant's previous attempt already failed this way."""
    if isinstance(error, NeedsReauth):
        # A plain NeedsReauth repeats an earlier verdict (the grant was already dead); subclasses are new.
        if type(error) is NeedsReauth:
            return None
        kind = "needs_reauth"
    elif isinstance(error, ClientAuthFailed):
        if repeat:
            return None
        kind = "client_auth_failed"
    else:
        return None
    assert error.grant is not None
    return GrantEvent(kind=kind, grant=error.grant, provider=provider, cause=error.code, message=error.message,
                      evidence=error.evidence(), at=at, worker=worker)  # fmt: skip


class Notifier:
    """Fans an event out to the registered sinks (callbacks, a `Webhook`)."""

    def __init__(self) -> None:
        self._sinks: list[EventSink] = []

    def add(self, sink: EventSink) -> None:
        self._sinks.append(sink)

    def __bool__(self) -> bool:
        return bool(self._sinks)

    @property
    def sinks(self) -> tuple[EventSink, ...]:
        return tuple(self._sinks)

    def emit(self, event: GrantEvent) -> None:
        for sink in list(self._sinks):
            try:
                sink(event)
            except Exception as exc:  # a hook's bug must not replace the grant's own error
                logger.warning("grantkeeper event hook %r failed on %s for grant %r: %s", sink, event.kind,
                               event.grant, type(exc).__name__)  # fmt: skip
