"""The engine's ports: what the keeper needs from a store and from a token endpoint.

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

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from grantkeeper._secrets import Secret
from grantkeeper.model import Attempt, AttemptReport, AttemptState, Grant, Lease, LeaseHolder, Provider
from grantkeeper.model.claims import Claim, GrantUpdate, LeaseTTL
from grantkeeper.model.exchange import RefreshRequest, SendResult
from grantkeeper.model.grant import ServedToken
from grantkeeper.model.retention import HistoryRetention

__all__ = ["AsyncSender", "AsyncStore", "Sender", "Store", "Subscriber"]

#: Called with (grant name, generation, kind) when another process commits ("commit") or invalidates an access
#: token ("invalidate").
Subscriber = Callable[[str, int, str], None]

P = ParamSpec("P")
R = TypeVar("R")


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

    def served_access(self, name: str, now: float) -> ServedToken | None: ...

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


def awaited(method: Callable[Concatenate[Any, P], R]) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]:
    """`Store`'s `method`, awaited: same parameters, a coroutine of the same result. Declares an abstract member of
    `AsyncStore`, so the two faces keep one signature and an async store missing a method cannot be instantiated."""

    async def missing(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        raise NotImplementedError(f"{type(self).__name__} does not implement {method.__name__}")

    functools.update_wrapper(missing, method)
    missing.__isabstractmethod__ = True  # type: ignore[attr-defined]
    return missing


class AsyncStore(ABC):
    """The same store contract as `Store`, awaited: a native async store (PostgreSQL's pool) subclasses it; any `Store`
    runs in worker threads by `ThreadedStore`. ``fingerprint`` and ``subscribe`` stay plain calls (no I/O).

    A base class rather than a Protocol: each awaited method is derived from `Store`'s declaration (mypy checks a
    subclass's override against it), where a Protocol would need every signature written out a second time."""

    #: How much attempt history the store keeps per grant (the keeper's doctor reads that much).
    retention: HistoryRetention

    @abstractmethod
    def fingerprint(self, token: Secret) -> str: ...

    @abstractmethod
    def subscribe(self, subscriber: Subscriber) -> None: ...

    close = awaited(Store.close)
    put_provider = awaited(Store.put_provider)
    get_provider = awaited(Store.get_provider)
    list_providers = awaited(Store.list_providers)
    import_grant = awaited(Store.import_grant)
    get_grant = awaited(Store.get_grant)
    get_grant_and_provider = awaited(Store.get_grant_and_provider)
    served_access = awaited(Store.served_access)
    list_grants = awaited(Store.list_grants)
    delete_grant = awaited(Store.delete_grant)
    list_attempts = awaited(Store.list_attempts)
    get_attempt = awaited(Store.get_attempt)
    spent_by = awaited(Store.spent_by)
    names = awaited(Store.names)
    lease_holder = awaited(Store.lease_holder)
    worker_alive = awaited(Store.worker_alive)
    claim = awaited(Store.claim)
    record_attempt = awaited(Store.record_attempt)
    commit = awaited(Store.commit)
    finish = awaited(Store.finish)
    release = awaited(Store.release)
    save_recovery = awaited(Store.save_recovery)
    replay_recovery = awaited(Store.replay_recovery)
    pending_recovery = awaited(Store.pending_recovery)
    invalidate_access = awaited(Store.invalidate_access)
    wait_for_change = awaited(Store.wait_for_change)


class Sender(Protocol):
    """Sends one refresh request to the provider's token endpoint within `budget` seconds (one wall-clock deadline,
    connect to last byte). Building the request (client secret, private key, clock) is the sender's job; a request
    that cannot be built raises `ConfigurationError`, and nothing is sent then."""

    def send(self, request: RefreshRequest, *, budget: float) -> SendResult: ...


class AsyncSender(Protocol):
    """`Sender`, awaited."""

    async def send(self, request: RefreshRequest, *, budget: float) -> SendResult: ...
