"""What one refresh transaction reads and writes in the store, as plain data: the claim it takes, the update it
commits, and the two refusals a store can answer with. The protocol, the engine and every store share these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from grantkeeper._exceptions import GrantkeeperError
from grantkeeper._secrets import Secret
from grantkeeper.model.attempt import Attempt
from grantkeeper.model.grant import Grant, Lease, LeaseHolder
from grantkeeper.model.provider import Provider

__all__ = ["Claim", "GenerationConflict", "GrantUpdate", "LeaseLost", "LeaseTTL"]


class GenerationConflict(GrantkeeperError, code="generation_conflict"):
    """The stored generation moved on since the refresh started; the write was refused (I3)."""


class LeaseLost(GrantkeeperError, code="lease_lost"):
    """This worker's lease expired and another worker took it; stop before spending anything."""


#: How long a claim's lease lasts: seconds, or a function of the grant's provider (a provider with a reuse grace
#: gets a lease short enough that a re-send after it expires still lands inside the grace).
LeaseTTL = float | Callable[[Provider], float]


@dataclass(frozen=True, slots=True)
class GrantUpdate:
    """What a committed refresh writes. ``refresh_token`` None keeps the current one. ``access_token`` None: the
    answer's access token was unusable (a malformed answer, or a re-send's answer not served on trust), so the
    grant has none until the next refresh; the successor refresh token is committed all the same (I1)."""

    refresh_token: Secret | None
    access_token: Secret | None
    expires_at: float | None
    scopes: tuple[str, ...] | None
    access_verified: bool = True
    #: The provider returned the refresh token it was sent (`refresh_token` is then None): not rotated.
    same_refresh_returned: bool = False
    #: When the provider said the refresh token in force after this commit expires (refresh_token_expires_in).
    refresh_expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """What ``claim`` found and did. Exactly one of: ``lease`` taken, ``holder`` busy, nothing needed."""

    grant: Grant
    provider: Provider
    lease: Lease | None = None
    attempt: Attempt | None = None
    holder: LeaseHolder | None = None
    #: An unresolved attempt (crashed or ambiguous) on the same token that ``attempt`` now re-sends.
    prior: Attempt | None = None
    #: The latest recorded re-send (or stale-token send) within the last two generations, to explain a later
    #: invalid_grant.
    recent_resend: Attempt | None = None
    #: The grant was brought up to date from local recovery storage; nothing needs sending.
    recovered: bool = False
    #: Every worker that can claim this grant also sees this store's local recovery storage (one host, as with
    #: SQLite), so a successor kept there is always committed by the claim. False for multi-host stores.
    shared_recovery: bool = True
    #: `holder` has a liveness signal this store can probe: its death is seen by the next claim, not announced.
    holder_signal: bool = False
    #: When the earliest unresolved attempt on the token `attempt` re-sends started: a provider's reuse grace
    #: counts from no earlier than this (its first possible use).
    spent_since: float | None = None
    #: The unexpired lease this claim took over because its holder's liveness signal said the holder is dead.
    took_over: LeaseHolder | None = None
