"""How hard the scheduler may press each provider: bounded concurrency, and backoff that honours the provider.

One `ProviderGate` per provider, pure state driven by the clock it is given. A provider that answers 429 or
``temporarily_unavailable`` (with or without ``Retry-After``), or fails transiently (5xx, connect errors), is paused
with exponential backoff and jitter; `Retry-After` is a floor, never shortened. Only that provider slows down:
other providers' gates are untouched. A success closes the episode. Permanent outcomes (a revoked grant, bad
client credentials) say nothing about the provider's health and leave the gate as it is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["GateOutcome", "ProviderGate"]


class GateOutcome(StrEnum):
    OK = "ok"
    THROTTLED = "throttled"  # 429, temporarily_unavailable: the provider asks us to slow down
    TRANSIENT = "transient"  # 5xx, connect errors, ambiguous exchanges
    PERMANENT = "permanent"  # about the grant or the client, not the provider


@dataclass
class ProviderGate:
    """`concurrency` refreshes at once at most; after failures, none before `paused_until`."""

    concurrency: int = 8
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    in_flight: int = 0
    failures: int = 0
    paused_until: float = 0.0
    last_reason: str | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1 or not 0 < self.backoff_base <= self.backoff_cap:
            raise ValueError("concurrency must be at least 1 and 0 < backoff_base <= backoff_cap")

    def free(self, now: float) -> int:
        """How many refreshes may start at `now`: none while paused; after a pause, one at a time until one
        succeeds (a probe, so a provider that is still down gets one request, not `concurrency` of them)."""
        if now < self.paused_until:
            return 0
        return max(0, (1 if self.failures else self.concurrency) - self.in_flight)

    def start(self, now: float) -> None:
        if self.free(now) < 1:
            raise RuntimeError("no refresh may start at this provider now")  # a scheduler bug, not an outcome
        self.in_flight += 1

    def finish(self, outcome: GateOutcome, now: float, *, retry_after: float | None = None,
               reason: str | None = None) -> None:  # fmt: skip
        """Record how one refresh ended; `retry_after` is the provider's ``Retry-After`` in seconds, if any."""
        self.in_flight = max(0, self.in_flight - 1)
        if outcome is GateOutcome.OK:
            self.failures, self.last_reason = 0, None
        elif outcome in (GateOutcome.THROTTLED, GateOutcome.TRANSIENT):
            if now >= self.paused_until:  # refreshes that were in flight when the pause began do not escalate it
                self.failures += 1
            wait = min(self.backoff_cap, self.backoff_base * 2.0 ** (self.failures - 1))
            wait *= 0.5 + 0.5 * self.rng.random()  # half to full: instances that failed together spread out
            if retry_after is not None:
                wait = max(wait, retry_after)
            self.paused_until = max(self.paused_until, now + wait)
            self.last_reason = reason or outcome.value
