"""The engine's ports: what the keeper needs from a store and from a token endpoint, as Protocols.

Adapters implement them (`grantkeeper.stores` the stores, `grantkeeper.tokens.sender` the HTTP senders); the engine
and the drivers see only these. Every store method is one transaction. The guarantees the refresh protocol relies on:

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
from typing import Protocol

from grantkeeper._secrets import Secret
from grantkeeper.model import Attempt, AttemptReport, AttemptState, Grant, Lease, LeaseHolder, Provider
from grantkeeper.model.claims import Claim, GrantUpdate, LeaseTTL
from grantkeeper.model.exchange import RefreshRequest, SendResult
from grantkeeper.model.retention import HistoryRetention

__all__ = ["AsyncSender", "AsyncStore", "Sender", "Store", "Subscriber"]

#: Called with (grant name, generation, kind) when another process commits ("commit") or invalidates an access
#: token ("invalidate").
Subscriber = Callable[[str, int, str], None]


class Store(Protocol):
    """Synchronous store interface. `AsyncKeeper` runs it in worker threads (`engine.threaded.ThreadedStore`) unless
    the store has a native `AsyncStore` face."""

    #: How much attempt history the store keeps per grant (the keeper's doctor reads that much).
    retention: HistoryRetention

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

    def pending_recovery(self, name: str | None = None) -> int:
        """How many successors (of grant `name`, or of any) wait in this host's local recovery storage."""
        ...

    def invalidate_access(self, name: str, *, access_fp: str) -> bool: ...

    # coordination
    def wait_for_change(self, name: str, *, poll: float, longest: float, generation: int | None = None) -> None: ...

    def subscribe(self, subscriber: Subscriber) -> None: ...


class AsyncStore(Protocol):
    """The same store contract as `Store`, awaited: a native async store (PostgreSQL's pool), or any `Store` run in
    worker threads by `ThreadedStore`. ``fingerprint`` and ``subscribe`` stay plain calls (no I/O)."""

    #: How much attempt history the store keeps per grant (the keeper's doctor reads that much).
    retention: HistoryRetention

    def fingerprint(self, token: Secret) -> str: ...

    async def close(self) -> None: ...

    # configuration
    async def put_provider(self, provider: Provider, *, now: float) -> None: ...

    async def get_provider(self, name: str) -> Provider: ...

    async def list_providers(self) -> list[Provider]: ...

    async def import_grant(
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

    async def get_grant(self, name: str) -> Grant: ...

    async def get_grant_and_provider(self, name: str) -> tuple[Grant, Provider]: ...

    async def list_grants(self) -> list[Grant]: ...

    async def delete_grant(self, name: str, *, expected_generation: int | None = None) -> None: ...

    async def list_attempts(self, name: str, *, limit: int = 20) -> list[Attempt]: ...

    async def get_attempt(self, name: str, attempt_id: int) -> Attempt | None: ...

    async def spent_by(self, name: str, refresh_fp: str) -> Attempt | None: ...

    async def names(self, kind: str) -> list[str]: ...

    async def lease_holder(self, name: str, *, now: float) -> LeaseHolder | None: ...

    async def worker_alive(self, worker: str) -> bool | None: ...

    # the refresh transaction
    async def claim(
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

    async def record_attempt(
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

    async def commit(
        self,
        lease: Lease,
        *,
        attempt_id: int,
        base: Grant,
        update: GrantUpdate,
        now: float,
        latency: float | None = None,
    ) -> Grant: ...

    async def finish(
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

    async def release(self, lease: Lease) -> None: ...

    async def save_recovery(
        self, name: str, *, expected_generation: int, attempt_id: int, update: GrantUpdate, now: float
    ) -> None: ...

    async def replay_recovery(self, *, now: float) -> list[str]: ...

    async def pending_recovery(self, name: str | None = None) -> int: ...

    async def invalidate_access(self, name: str, *, access_fp: str) -> bool: ...

    # coordination
    async def wait_for_change(
        self, name: str, *, poll: float, longest: float, generation: int | None = None
    ) -> None: ...

    def subscribe(self, subscriber: Subscriber) -> None: ...


class Sender(Protocol):
    """Sends one refresh request to the provider's token endpoint within `budget` seconds (one wall-clock deadline,
    connect to last byte). Building the request (client secret, private key, clock) is the sender's job; a request
    that cannot be built raises `ConfigurationError`, and nothing is sent then."""

    def send(self, request: RefreshRequest, *, budget: float) -> SendResult: ...


class AsyncSender(Protocol):
    """`Sender`, awaited."""

    async def send(self, request: RefreshRequest, *, budget: float) -> SendResult: ...
