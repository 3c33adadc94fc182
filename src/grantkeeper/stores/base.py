"""The store contract: the source of truth for providers and grants, leases and attempts.

Every method is one transaction. The guarantees the refresh protocol relies on:

* ``claim`` takes the grant's lease and durably records the attempt in the same transaction, after
  re-reading the grant inside it (steps 3-5 of docs/design.md): if the grant no longer needs a refresh, or
  another worker holds an unexpired lease, nothing is written. A successor kept in local recovery storage
  for the current generation is committed by ``claim`` instead of recording an attempt, so no worker on
  this host spends a token whose successor is already known.
* ``commit`` is a compare-and-set on generation (I3): it writes generation+1 only if the stored generation
  is the one the refresh started from (``base``, the grant as claimed), closes the attempt and releases the
  lease, atomically and durably.
  A holder whose lease has expired may still commit while its generation is current: its successor token
  is the only valid one (I1).
* Leases carry a fence that increases on every acquisition; releasing or renewing checks it.
* A lease records its holder's liveness signal (`grantkeeper.stores.liveness`). An unexpired lease whose
  holder's signal is free (the holder died) is taken over at once, as if it had expired (``took_over``);
  a holder whose signal is held or unknown is waited for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from grantkeeper._exceptions import GrantkeeperError
from grantkeeper._secrets import Secret
from grantkeeper.model import Attempt, AttemptReport, AttemptState, Grant, Lease, LeaseHolder, Provider

__all__ = ["Claim", "GenerationConflict", "GrantUpdate", "LeaseLost", "LeaseTTL", "Store"]


class GenerationConflict(GrantkeeperError):
    """The stored generation moved on since the refresh started; the write was refused (I3)."""

    code = "generation_conflict"


class LeaseLost(GrantkeeperError):
    """This worker's lease expired and another worker took it; stop before spending anything."""

    code = "lease_lost"


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


class Store(Protocol):
    """Synchronous store interface. Async callers run these methods in a worker thread."""

    def fingerprint(self, token: Secret) -> str: ...

    def close(self) -> None: ...

    # configuration
    def put_provider(self, provider: Provider, *, now: float) -> None: ...

    def get_provider(self, name: str) -> Provider: ...

    def list_providers(self) -> list[Provider]: ...

    def import_grant(
        self,
        name: str,
        *,
        provider: str,
        refresh_token: Secret,
        scopes: tuple[str, ...],
        now: float,
        min_generation: int = 1,
        created_at: float | None = None,
        refreshed_at: float | None = None,
        refresh_issued_at: float | None = None,
        refresh_expires_at: float | None = None,
        access_token: Secret | None = None,
        expires_at: float | None = None,
    ) -> Grant: ...

    def get_grant(self, name: str) -> Grant: ...

    def get_grant_and_provider(self, name: str) -> tuple[Grant, Provider]: ...

    def list_grants(self) -> list[Grant]: ...

    def delete_grant(self, name: str, *, expected_generation: int | None = None) -> None: ...

    def list_attempts(self, name: str, *, limit: int = 20) -> list[Attempt]: ...

    def get_attempt(self, name: str, attempt_id: int) -> Attempt | None: ...

    def spent_by(self, name: str, refresh_fp: str) -> Attempt | None: ...

    def names(self, kind: str) -> list[str]: ...

    def lease_holder(self, name: str, *, now: float) -> LeaseHolder | None: ...

    def worker_alive(self, worker: str) -> bool | None: ...

    # the refresh transaction
    def claim(
        self,
        name: str,
        *,
        worker: str,
        lease_ttl: LeaseTTL,
        now: float,
        force: bool,
        seen_generation: int | None,
        actor: str = "",
    ) -> Claim: ...

    def record_attempt(
        self,
        lease: Lease,
        *,
        generation: int,
        refresh_fp: str,
        resend_of: int | None,
        lease_ttl: float,
        now: float,
        actor: str = "",
        try_number: int = 1,
    ) -> Attempt: ...

    def commit(
        self,
        lease: Lease,
        *,
        attempt_id: int,
        base: Grant,
        update: GrantUpdate,
        now: float,
        latency: float | None = None,
    ) -> Grant: ...

    def finish(
        self,
        lease: Lease,
        *,
        attempt_id: int,
        state: AttemptState,
        outcome: str,
        now: float,
        mark_dead: bool = False,
        release: bool = True,
        report: AttemptReport | None = None,
    ) -> None: ...

    def release(self, lease: Lease) -> None: ...

    def save_recovery(
        self, name: str, *, expected_generation: int, attempt_id: int, update: GrantUpdate, now: float
    ) -> None: ...

    def replay_recovery(self, *, now: float) -> list[str]: ...

    def invalidate_access(self, name: str, *, access_fp: str) -> bool: ...

    # coordination
    def wait_for_change(self, name: str, *, poll: float, longest: float, generation: int | None = None) -> None: ...

    def subscribe(self, subscriber: Callable[[str, int, str], None]) -> None: ...
