"""Attempt: the durable record that a refresh token is about to be (or was) sent, and how that ended."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["Attempt", "AttemptReport", "AttemptState", "OutcomeClass"]


class AttemptState(StrEnum):
    OPEN = "open"  # recorded before sending; if its worker died, the token may or may not have been spent
    COMMITTED = "committed"  # the response was committed as the next generation
    RECOVERED = "recovered"  # committed later from local recovery storage
    NOT_SENT = "not_sent"  # the request never left (connection refused, ...): token not spent
    REJECTED = "rejected"  # the provider answered with an error: token not consumed by this attempt
    AMBIGUOUS = "ambiguous"  # sent, but no usable answer (timeout, reset, malformed 200): maybe spent
    ABANDONED = "abandoned"  # an open attempt that a later attempt of the same generation superseded
    DEAD = "dead"  # ended in a dead grant (invalid_grant)

    @property
    def maybe_spent(self) -> bool:
        """The token this attempt carried may have been consumed with the successor never stored."""
        return self in (AttemptState.OPEN, AttemptState.AMBIGUOUS)


class OutcomeClass(StrEnum):
    """Why an attempt ended the way it did: the vocabulary of `grantkeeper history` and `doctor`.

    The failure classes carry the same codes as the errors raised for them (`GrantkeeperError.code`).
    """

    COMMITTED = "committed"
    RECOVERED = "recovered"
    STALE_LOCAL_TOKEN = "stale_local_token"
    LOST_IN_FLIGHT = "lost_in_flight"
    REUSE_DETECTED = "reuse_detected"
    REVOKED_OR_EXPIRED = "revoked_or_expired"
    CLIENT_AUTH_FAILED = "client_auth_failed"
    PROVIDER_REJECTED = "provider_rejected"
    PROVIDER_UNAVAILABLE = "provider_unavailable"  # not sent, or a transient HTTP answer: token not spent
    AMBIGUOUS = "ambiguous"  # sent without a usable answer: maybe spent, the next refresh re-sends
    MALFORMED_RESPONSE = "malformed_response"
    DEFERRED = "deferred"  # not sent: another host's possibly-spent attempt may still commit
    SUPERSEDED = "superseded"  # another attempt committed this generation
    CONFIGURATION = "configuration"  # not sent: the client secret could not be read

    @property
    def is_failure(self) -> bool:
        return self not in (OutcomeClass.COMMITTED, OutcomeClass.RECOVERED, OutcomeClass.SUPERSEDED)


@dataclass(frozen=True, slots=True)
class AttemptReport:
    """What the history keeps about how an attempt ended, beyond its state and one-line outcome."""

    kind: OutcomeClass
    error_code: str | None = None  # the provider's OAuth error code (RFC 6749 §5.2)
    error_description: str | None = None  # provider text with token-like runs cut out (sanitize_provider_text)
    http_status: int | None = None
    latency: float | None = None  # seconds from sending to the answer
    evidence: Mapping[str, object] = field(default_factory=dict)  # the classified error's facts: ids, fps


@dataclass(frozen=True, slots=True)
class Attempt:
    id: int
    grant: str
    generation: int
    refresh_fp: str
    worker: str
    started_at: float
    state: AttemptState
    outcome: str | None = None
    resend_of: int | None = None
    finished_at: float | None = None
    # History (schema version 2); defaults for rows read by the hot path, which selects only the above.
    actor: str = ""
    try_number: int = 1
    new_generation: int | None = None
    received_fp: str | None = None
    rotated: bool | None = None
    outcome_class: OutcomeClass | None = None
    error_code: str | None = None
    error_description: str | None = None
    http_status: int | None = None
    latency: float | None = None
    evidence: Mapping[str, object] = field(default_factory=dict)
