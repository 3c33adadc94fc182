"""When the scheduler acts on a grant, and why: pure functions of the grant, its provider and the clock.

Three actions, whichever comes first:

* **refresh ahead** (hot grants only: used recently, or marked hot): refresh before the access token stops being
  served (`Grant.usable_until`, expiry minus the keeper's skew), so no caller ever waits for a refresh. The lead is
  a fraction of the token's usable lifetime within bounds, and each grant acts a little earlier than the lead by a
  jitter drawn from its name and generation: the same plan on every instance and after every restart, and the
  refreshes of grants loaded together spread out instead of arriving at the provider at once.
* **keep alive**: refresh before a renewable end of the refresh token (the provider's idle lifetime counted from
  the last refresh, or an expiry it stated with a rotating successor), so an idle grant is not forgotten.
* **warn**: an absolute end (only a new consent renews it) is reported ahead of time; refreshing does not help.

A grant that needs re-authorization has no plan: nothing a refresh could do.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from enum import StrEnum

from grantkeeper.model import Grant, GrantState, Provider
from grantkeeper.model.lifetimes import refresh_token_ends

__all__ = ["Action", "Planned", "SchedulePolicy", "jitter", "next_action"]

DAY = 86400.0


class Action(StrEnum):
    REFRESH_AHEAD = "refresh_ahead"
    KEEPALIVE = "keepalive"
    WARN = "warn"


@dataclass(frozen=True, slots=True)
class SchedulePolicy:
    """How far ahead the scheduler acts.

    Args:
        lead_fraction: refresh a hot grant this fraction of its access token's usable lifetime before it stops
            being served, bounded by ``lead_min`` and ``lead_max`` seconds.
        jitter_fraction: each grant acts up to this fraction of its lead earlier still (its own fixed share).
        keepalive_fraction: refresh this fraction of a renewable refresh-token lifetime before it ends, at most
            ``keepalive_max`` seconds before.
        warn_before: report an absolute end this long before it.
    """

    lead_fraction: float = 0.2
    lead_min: float = 2.0
    lead_max: float = 300.0
    jitter_fraction: float = 0.5
    keepalive_fraction: float = 0.1
    keepalive_max: float = 7 * DAY
    warn_before: float = 7 * DAY

    def __post_init__(self) -> None:
        if not 0 < self.lead_fraction < 1 or not 0 <= self.jitter_fraction < 1:
            raise ValueError("lead_fraction must be in (0, 1) and jitter_fraction in [0, 1)")
        if not 0 < self.lead_min <= self.lead_max:
            raise ValueError("lead_min must be positive and at most lead_max")
        if not 0 < self.keepalive_fraction < 1 or self.keepalive_max <= 0 or self.warn_before < 0:
            raise ValueError("keepalive_fraction must be in (0, 1), keepalive_max positive, warn_before >= 0")


@dataclass(frozen=True, slots=True)
class Planned:
    """Act on `grant` at `at` (seconds since the epoch) for `reason`; `deadline` is when acting is too late (the
    token stops being served, the refresh token ends)."""

    grant: str
    action: Action
    at: float
    deadline: float
    generation: int
    reason: str


def jitter(name: str, generation: int) -> float:
    """A fixed share in [0, 1) for one generation of one grant: the same on every instance and every run."""
    digest = hashlib.blake2b(f"{generation}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def next_action(
    grant: Grant,
    provider: Provider,
    *,
    hot: bool,
    skew: float,
    policy: SchedulePolicy = SchedulePolicy(),
    warned_at: float | None = None,
) -> Planned | None:
    """The grant's next planned action, or None. `skew` is the keeper's (`Keeper.access_token` refreshes a token
    within it of expiry); `hot` says whether the grant is kept fresh ahead of time; a warning planned at or before
    `warned_at` was given already. An action already due has an `at` in the past: the caller acts on it at once."""
    if grant.state is not GrantState.ACTIVE or grant.refresh_fp is None:
        return None
    plans = [p for p in (_ahead(grant, skew, policy) if hot else None, *_ends(grant, provider, policy)) if p]
    if warned_at is not None:
        plans = [p for p in plans if p.action is not Action.WARN or p.at > warned_at]
    return min(plans, key=lambda p: (p.at, p.action != Action.REFRESH_AHEAD)) if plans else None


def _ahead(grant: Grant, skew: float, policy: SchedulePolicy) -> Planned | None:
    if grant.access_fp is None:  # a hot grant without an access token: get one before a caller needs it
        since = grant.updated_at or 0.0
        # no token whose end could be missed: a caller that comes first pays for it, nothing else is late
        return Planned(grant.name, Action.REFRESH_AHEAD, since, math.inf, grant.generation, "no access token stored")
    if grant.expires_at is None:
        return None  # a token without a stated lifetime is served until rejected: nothing to refresh ahead of
    until = _usable_until(grant, skew)
    issued = grant.updated_at if grant.updated_at is not None else until
    lead = min(policy.lead_max, max(policy.lead_min, policy.lead_fraction * max(0.0, until - issued)))
    lead *= 1 + policy.jitter_fraction * jitter(grant.name, grant.generation)
    at = max(issued, until - lead) if until > issued else until
    reason = f"access token served until {until:.0f}; refresh {until - at:.1f} s ahead"
    return Planned(grant.name, Action.REFRESH_AHEAD, at, until, grant.generation, reason)


def _usable_until(grant: Grant, skew: float) -> float:
    """`Grant.usable_until` without the token itself: the planner reads fingerprints and times, never secrets."""
    assert grant.expires_at is not None
    if grant.updated_at is not None:
        skew = min(skew, max(0.0, (grant.expires_at - grant.updated_at) / 2))
    return grant.expires_at - skew


def _ends(grant: Grant, provider: Provider, policy: SchedulePolicy) -> list[Planned]:
    plans = []
    for end in refresh_token_ends(grant, provider):
        if end.renewable:
            start = grant.refreshed_at if end.kind == "idle" and grant.refreshed_at is not None else grant.updated_at
            lifetime = end.deadline - start if start is not None else policy.keepalive_max
            margin = min(policy.keepalive_max, policy.keepalive_fraction * max(0.0, lifetime))
            margin *= 1 + policy.jitter_fraction * jitter(grant.name, grant.generation)
            plans.append(Planned(grant.name, Action.KEEPALIVE, end.deadline - margin, end.deadline, grant.generation,
                                 f"refresh token's {end.kind} end at {end.deadline:.0f}"))  # fmt: skip
        else:
            plans.append(Planned(grant.name, Action.WARN, end.deadline - policy.warn_before, end.deadline,
                                 grant.generation, f"refresh token's {end.kind} end at {end.deadline:.0f}: only a "
                                 "new consent renews it"))  # fmt: skip
    return plans
