"""The steps the refresh protocol yields, and what each expects back.

Store steps carry a ``run(store)`` that performs exactly one store transaction; a sync driver calls it, an
async driver calls it in a worker thread. `Send`, `Sleep`, `Now`, `Failpoint` and `Log` are the only
other effects. Nothing here decides anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from grantkeeper.model import Attempt, AttemptReport, AttemptState, Grant, Lease, Provider
from grantkeeper.stores.base import Claim, GrantUpdate, LeaseTTL, Store

__all__ = [
    "ClaimGrant",
    "Commit",
    "Failpoint",
    "Finish",
    "Load",
    "Log",
    "Now",
    "Record",
    "Release",
    "SaveRecovery",
    "Send",
    "Sleep",
    "Step",
    "StoreStep",
    "WaitForChange",
]


class StoreStep:
    """One store transaction. ``releases`` tells the driver the lease is gone once it succeeds."""

    releases = False

    def run(self, store: Store) -> Any:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Load(StoreStep):
    """Read a grant and its provider -> ``tuple[Grant, Provider]``."""

    name: str

    def run(self, store: Store) -> tuple[Grant, Provider]:
        return store.get_grant_and_provider(self.name)


@dataclass(frozen=True, slots=True)
class ClaimGrant(StoreStep):
    """Steps 3-5: lease + re-read + durable attempt, in one transaction -> `Claim`."""

    name: str
    worker: str
    lease_ttl: LeaseTTL
    now: float
    force: bool
    seen_generation: int | None
    actor: str = ""  # the thread or task, for the history

    def run(self, store: Store) -> Claim:
        return store.claim(
            self.name, worker=self.worker, lease_ttl=self.lease_ttl, now=self.now, force=self.force,
            seen_generation=self.seen_generation, actor=self.actor,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Record(StoreStep):
    """Another attempt under the held lease (a retry or a re-send) -> `Attempt`."""

    lease: Lease
    generation: int
    refresh_fp: str
    resend_of: int | None
    lease_ttl: float
    now: float
    actor: str = ""
    try_number: int = 1

    def run(self, store: Store) -> Attempt:
        return store.record_attempt(
            self.lease, generation=self.generation, refresh_fp=self.refresh_fp, resend_of=self.resend_of,
            lease_ttl=self.lease_ttl, now=self.now, actor=self.actor, try_number=self.try_number,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Commit(StoreStep):
    """Step 7: compare-and-set generation+1, close the attempt, release the lease -> `Grant`."""

    lease: Lease
    attempt_id: int
    base: Grant
    update: GrantUpdate
    now: float
    latency: float | None = None
    releases = True

    def run(self, store: Store) -> Grant:
        return store.commit(
            self.lease, attempt_id=self.attempt_id, base=self.base, update=self.update, now=self.now,
            latency=self.latency,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Finish(StoreStep):
    """Step 8: record the classified outcome on the attempt (and maybe mark the grant dead) -> None."""

    lease: Lease
    attempt_id: int
    state: AttemptState
    outcome: str
    now: float
    mark_dead: bool = False
    release: bool = True
    report: AttemptReport | None = None

    @property
    def releases(self) -> bool:  # type: ignore[override]
        return self.release

    def run(self, store: Store) -> None:
        store.finish(
            self.lease, attempt_id=self.attempt_id, state=self.state, outcome=self.outcome, now=self.now,
            mark_dead=self.mark_dead, release=self.release, report=self.report,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Release(StoreStep):
    lease: Lease
    releases = True

    def run(self, store: Store) -> None:
        store.release(self.lease)


@dataclass(frozen=True, slots=True)
class SaveRecovery(StoreStep):
    """Keep a successor the store refused in durable local recovery storage -> None."""

    name: str
    expected_generation: int
    attempt_id: int
    update: GrantUpdate
    now: float

    def run(self, store: Store) -> None:
        store.save_recovery(
            self.name, expected_generation=self.expected_generation, attempt_id=self.attempt_id,
            update=self.update, now=self.now,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class WaitForChange(StoreStep):
    """Wait while another worker refreshes: until the store announces a generation past `generation` or the
    holder's release (at most `longest`), or for `poll` seconds on a store that cannot announce -> None."""

    name: str
    generation: int
    poll: float
    longest: float

    def run(self, store: Store) -> None:
        store.wait_for_change(self.name, poll=self.poll, longest=self.longest, generation=self.generation)


@dataclass(frozen=True, slots=True)
class Send:
    """POST to the token endpoint within `budget` seconds -> `SendResult` (`HttpReply`, `NotSent`, `Ambiguous`)."""

    request: httpx.Request
    budget: float


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Now:
    """-> current UTC wall time (epoch seconds) from the driver's clock."""


@dataclass(frozen=True, slots=True)
class Failpoint:
    """A named point of the transaction where crash tests can kill the process."""

    name: str


@dataclass(frozen=True, slots=True)
class Log:
    """Something an operator should see. ``evidence`` holds fingerprints and ids, never tokens."""

    level: int
    message: str
    evidence: dict[str, object]


Step = StoreStep | Send | Sleep | Now | Failpoint | Log
