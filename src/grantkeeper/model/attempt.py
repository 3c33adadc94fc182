"""Attempt: the durable record that a refresh token is about to be (or was) sent."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Attempt", "AttemptState"]


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
