"""The steps the refresh protocol yields, and what each expects back.

Every step is plain data. A store step names exactly one store transaction, which the drivers run through the
table in `grantkeeper.engine.dispatch`; `Send`, `Sleep`, `Now`, `Failpoint` and `Log` are the only other effects.
Nothing here decides anything, and nothing here knows the store or the transport.
"""

from __future__ import annotations

from dataclasses import dataclass

from grantkeeper.model import AttemptReport, AttemptState, Grant, Lease
from grantkeeper.model.claims import GrantUpdate, LeaseTTL
from grantkeeper.model.exchange import RefreshRequest

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


@dataclass(frozen=True, slots=True)
class Load(StoreStep):
    """Read a grant and its provider -> ``tuple[Grant, Provider]``."""

    name: str


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


@dataclass(frozen=True, slots=True)
class Release(StoreStep):
    lease: Lease
    releases = True


@dataclass(frozen=True, slots=True)
class SaveRecovery(StoreStep):
    """Keep a successor the store refused in durable local recovery storage -> None."""

    name: str
    expected_generation: int
    attempt_id: int
    update: GrantUpdate
    now: float


@dataclass(frozen=True, slots=True)
class WaitForChange(StoreStep):
    """Wait while another worker refreshes: until the store announces a generation past `generation` or the
    holder's release (at most `longest`), or for `poll` seconds on a store that cannot announce -> None."""

    name: str
    generation: int
    poll: float
    longest: float


@dataclass(frozen=True, slots=True)
class Send:
    """POST a refresh to the token endpoint within `budget` seconds -> `SendResult` (`HttpReply`, `NotSent`,
    `Ambiguous`). The driver's sender builds the HTTP request; `ConfigurationError` if it cannot (no secret)."""

    request: RefreshRequest
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
