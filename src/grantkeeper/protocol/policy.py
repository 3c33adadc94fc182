"""Numbers that shape the refresh: waits, retries and backoff. Pure; randomness is passed in."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from grantkeeper._exceptions import ConfigurationError
from grantkeeper.model import Provider, RotationMode

__all__ = ["GRACE_LEASE_SHARE", "MIN_GRACE_REQUEST_TIMEOUT", "RefreshPolicy"]

#: With a reuse grace G, a lease lasts at most this share of G: a worker that waits out a live but stuck holder's
#: lease (its liveness signal still held) then re-sends inside G of the holder's send, with time to spare.
GRACE_LEASE_SHARE = 0.5
#: The shortest request budget such a grace-shortened lease leaves (the lease is at least twice this plus 1 s).
#: Below it a grace is too short to fit a lease in; only the liveness signal can re-send inside it then.
MIN_GRACE_REQUEST_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """How one refresh behaves.

    Args:
        lease_ttl: how long a lease lasts; renewed before every send. Must be at least twice
            ``request_timeout`` plus a second: every exchange ends (answered or aborted) within
            ``request_timeout`` of the renewal, so the lease never expires under a live request and no refresh
            token is ever in two requests at once.
        request_timeout: one wall-clock deadline for a whole token exchange, connect to last byte. A server
            trickling bytes cannot stretch it (per-phase timeouts alone would restart with every byte): the
            sync sender clamps each socket operation to the time left, the async one cancels the exchange. An exchange
            aborted after the request was written is ambiguous (possibly received), like a timeout.
        wait_timeout: how long a worker waits for another worker's refresh before `LeaseTimeout`.
        max_tries: token requests per refresh for transient failures (5xx, 429, connect errors).
        deadline: total seconds one refresh may spend retrying.
        backoff_base, backoff_cap: exponential backoff with jitter (half to full of the computed wait).
        poll_initial, poll_max: how often a waiter re-checks a grant another worker is refreshing.
        adopt_after: on a multi-host store, how long after another worker's attempt a risky re-send of its
            possibly spent token waits (the provider rotates and the grace window is over): that worker may
            still be alive behind a network or database outage, holding the successor in its local recovery
            storage. Inside the grace window, or for a non-rotating provider, the re-send is immediate.
        liveness_recheck: the longest a waiter waits before asking again whether a lease holder with a liveness
            signal is still alive (its death releases the signal but notifies nobody).

    For a provider with a reuse grace, `for_provider` shortens ``lease_ttl`` (and ``request_timeout`` with it)
    so that waiting out a lease still leaves a re-send inside the grace.
    """

    lease_ttl: float = 30.0
    request_timeout: float = 10.0
    wait_timeout: float = 60.0
    max_tries: int = 4
    deadline: float = 20.0
    backoff_base: float = 0.2
    backoff_cap: float = 5.0
    poll_initial: float = 0.005
    poll_max: float = 0.1
    adopt_after: float = 60.0
    liveness_recheck: float = 0.25
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def __post_init__(self) -> None:
        if not self.request_timeout > 0:
            raise ConfigurationError("request_timeout must be positive")
        if self.lease_ttl < 2 * self.request_timeout + 1:
            raise ConfigurationError(
                f"lease_ttl ({self.lease_ttl:g} s) must be at least twice request_timeout "
                f"({self.request_timeout:g} s) plus 1 s, or a slow but healthy refresh could lose its lease "
                "and let another worker spend the same token"
            )
        if self.max_tries < 1 or self.wait_timeout < 0 or self.deadline < 0:
            raise ConfigurationError("max_tries must be >= 1; wait_timeout and deadline must be >= 0")
        if not self.liveness_recheck > 0:
            raise ConfigurationError("liveness_recheck must be positive")

    def backoff(self, retry: int, retry_after: float | None) -> float:
        """Wait before retry number `retry` (1-based); a provider's Retry-After is a floor."""
        computed = min(self.backoff_cap, self.backoff_base * 2 ** min(retry - 1, 64))
        wait = computed * self.rng.uniform(0.5, 1.0)
        return float(max(wait, retry_after or 0.0))

    def retry_wait(self, tries: int, retry_after: float | None, *, started: float, now: float) -> float | None:
        """The wait before another try after `tries` transient failures of a refresh that began at `started`, or
        None to give up: out of tries, past the deadline, or a wait longer than half the lease."""
        wait = self.backoff(tries, retry_after)
        if tries >= self.max_tries or now + wait - started > self.deadline or wait > self.lease_ttl / 2:
            return None
        return wait

    def for_provider(self, provider: Provider) -> RefreshPolicy:
        """This policy as one refresh against `provider` uses it: with a reuse grace G, the lease lasts at most
        `GRACE_LEASE_SHARE` of G (never below twice `MIN_GRACE_REQUEST_TIMEOUT` plus 1 s) and the request budget
        shrinks to fit inside it, as it must (the lease outlives every request)."""
        if provider.rotation is RotationMode.NEVER or provider.reuse_grace <= 0:
            return self
        cap = max(provider.reuse_grace * GRACE_LEASE_SHARE, 2 * MIN_GRACE_REQUEST_TIMEOUT + 1)
        if self.lease_ttl <= cap:
            return self
        return replace(self, lease_ttl=cap, request_timeout=min(self.request_timeout, (cap - 1) / 2))

    def lease_ttl_for(self, provider: Provider) -> float:
        """The lease a claim takes for a grant of `provider` (see `for_provider`)."""
        return self.for_provider(provider).lease_ttl

    def grace_over(self, provider: Provider, *, spent_since: float, now: float) -> bool:
        """Whether `provider`'s reuse grace has surely passed for a token first possibly sent at `spent_since`.

        The provider may have received that request as late as one request budget after it started, and its grace
        counts from then. Only for a rotating provider with a grace: without one, a re-send is the one way to
        learn whether the token was spent at all (it may never have left), and it is made once, knowingly.
        """
        if provider.rotation is RotationMode.NEVER or provider.reuse_grace <= 0:
            return False
        return now >= spent_since + self.for_provider(provider).request_timeout + provider.reuse_grace
