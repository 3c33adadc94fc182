"""The scheduler's plan (protocol/planning.py): a hot grant is refreshed before its token stops being served, an
idle one before its refresh token's renewable end, an absolute end is warned about; plans are the same on every
instance; and the provider gates (protocol/throttle.py) slow one provider down without touching another."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grantkeeper import Provider, RotationMode, Secret
from grantkeeper.model import Grant, GrantState
from grantkeeper.protocol.planning import Action, SchedulePolicy, jitter, next_action
from grantkeeper.protocol.throttle import GateOutcome, ProviderGate

NOW = 1_800_000_000.0
SKEW = 60.0


def _provider(**lifetimes: float | None) -> Provider:
    return Provider(name="p", token_url="https://auth.example.com/token", client_id="c",
                    client_secret=Secret("s"), rotation=RotationMode.ALWAYS, **lifetimes)  # type: ignore[arg-type]  # fmt: skip


def _grant(name: str = "g", *, lifetime: float | None = 3600.0, issued: float = NOW, generation: int = 3,
           state: GrantState = GrantState.ACTIVE, refreshed_at: float | None = None,
           created_at: float | None = None, access: bool = True) -> Grant:  # fmt: skip
    return Grant(name=name, provider="p", refresh_token=None, refresh_fp="fp_r", access_token=None,
                 access_fp="fp_a" if access else None, expires_at=None if lifetime is None else issued + lifetime,
                 scopes=(), generation=generation, state=state, updated_at=issued,
                 refreshed_at=issued if refreshed_at is None else refreshed_at, created_at=created_at)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(lifetime=st.floats(min_value=1.0, max_value=30 * 86400.0), skew=st.floats(min_value=0.0, max_value=600.0),
       name=st.text(min_size=1, max_size=20), generation=st.integers(min_value=1, max_value=10**6))  # fmt: skip
def test_a_hot_grant_is_refreshed_before_its_token_stops_being_served(
    lifetime: float, skew: float, name: str, generation: int
) -> None:
    grant = _grant(name, lifetime=lifetime, generation=generation)
    plan = next_action(grant, _provider(), hot=True, skew=skew)
    assert plan is not None and plan.action is Action.REFRESH_AHEAD
    served_until = grant.expires_at - min(skew, lifetime / 2)  # type: ignore[operator]  # Grant.usable_until's rule
    assert plan.deadline == pytest.approx(served_until)
    assert NOW <= plan.at <= served_until  # never before the token was issued, never after it stops being served
    if served_until - NOW >= 10 * SchedulePolicy().lead_min:
        assert plan.at < served_until  # a real lead, not a refresh at the last moment


def test_the_lead_is_bounded_and_jittered_per_grant_and_generation() -> None:
    policy = SchedulePolicy()
    hour = [next_action(_grant(f"g{i}"), _provider(), hot=True, skew=SKEW) for i in range(200)]
    leads = [p.deadline - p.at for p in hour if p]
    assert min(leads) >= policy.lead_max and max(leads) <= policy.lead_max * (1 + policy.jitter_fraction)
    assert len({round(lead, 3) for lead in leads}) > 150  # spread out, not one burst at the provider
    short = next_action(_grant(lifetime=20.0), _provider(), hot=True, skew=SKEW)
    assert short is not None and 0 < short.deadline - short.at <= 10.0  # 20 s token, served for 10 s
    again = next_action(_grant("g0"), _provider(), hot=True, skew=SKEW)
    assert again == hour[0]  # the same plan on every instance and after a restart
    assert jitter("g0", 3) != jitter("g0", 4)  # a new generation draws a new share


def test_a_grant_that_is_not_hot_is_only_kept_alive() -> None:
    assert next_action(_grant(), _provider(), hot=False, skew=SKEW) is None
    idle = _provider(refresh_idle_ttl=30 * 86400.0)
    plan = next_action(_grant(refreshed_at=NOW - 20 * 86400), idle, hot=False, skew=SKEW)
    assert plan is not None and plan.action is Action.KEEPALIVE
    assert plan.deadline == NOW + 10 * 86400
    assert NOW - 20 * 86400 < plan.at < plan.deadline
    assert plan.deadline - plan.at <= 7 * 86400 * 1.5  # keepalive_max, jittered


def test_an_absolute_end_is_warned_about_not_refreshed() -> None:
    capped = _provider(refresh_absolute_ttl=90 * 86400.0)
    plan = next_action(_grant(created_at=NOW - 85 * 86400), capped, hot=False, skew=SKEW)
    assert plan is not None and plan.action is Action.WARN
    assert plan.at == plan.deadline - 7 * 86400 and "new consent" in plan.reason
    # once warned, the warning is not planned again (the grant has no other plan: it is not hot, nothing renews)
    assert next_action(_grant(created_at=NOW - 85 * 86400), capped, hot=False, skew=SKEW, warned_at=NOW) is None
    early = next_action(_grant(created_at=NOW - 85 * 86400), capped, hot=False, skew=SKEW, warned_at=plan.at - 1)
    assert early == plan  # a warning given before this one was planned does not count


def test_the_earliest_action_wins_and_no_plan_without_a_usable_grant() -> None:
    idle = _provider(refresh_idle_ttl=86400.0)
    both = next_action(_grant(lifetime=3600.0, refreshed_at=NOW - 86000), idle, hot=True, skew=SKEW)
    assert both is not None and both.action is Action.KEEPALIVE  # the idle end comes before the token's
    assert next_action(_grant(state=GrantState.NEEDS_REAUTH), idle, hot=True, skew=SKEW) is None
    missing = next_action(_grant(access=False), _provider(), hot=True, skew=SKEW)
    assert missing is not None and missing.at <= NOW  # due now: no caller should be the one to get it


def test_policy_bounds_are_checked() -> None:
    for bad in ({"lead_fraction": 0.0}, {"jitter_fraction": 1.0}, {"lead_min": 10.0, "lead_max": 5.0},
                {"keepalive_fraction": 1.5}, {"warn_before": -1.0}):  # fmt: skip
        with pytest.raises(ValueError):
            SchedulePolicy(**bad)  # type: ignore[arg-type]


def test_a_throttled_provider_pauses_alone_and_retry_after_is_a_floor() -> None:
    slow, other = ProviderGate(concurrency=2, rng=random.Random(1)), ProviderGate(concurrency=2)
    slow.start(NOW)
    slow.start(NOW)
    assert slow.free(NOW) == 0
    with pytest.raises(RuntimeError):
        slow.start(NOW)
    slow.finish(GateOutcome.THROTTLED, NOW, retry_after=30.0, reason="429")
    assert slow.free(NOW + 29.9) == 0 and slow.free(NOW + 30.1) == 0  # the other one is still in flight
    assert other.free(NOW) == 2  # another provider's gate is untouched
    slow.finish(GateOutcome.TRANSIENT, NOW + 1)  # the other one, in flight when the pause began
    assert slow.failures == 1 and slow.paused_until == NOW + 30.0  # ... does not escalate it
    assert slow.free(NOW + 30.1) == 1  # after a pause: one probe at a time ...
    slow.start(NOW + 30.1)
    assert slow.free(NOW + 30.1) == 0
    waits, at = [], NOW + 30.1
    for _ in range(12):  # each failed probe backs off exponentially up to the cap
        slow.finish(GateOutcome.TRANSIENT, at)
        waits.append(slow.paused_until - at)
        at = slow.paused_until
        slow.start(at)
    assert waits[-1] <= slow.backoff_cap and waits[-1] >= slow.backoff_cap / 2
    assert all(later >= earlier / 2 for earlier, later in itertools.pairwise(waits))
    slow.finish(GateOutcome.PERMANENT, at)
    assert slow.failures == 13  # a revoked grant says nothing about the provider
    slow.finish(GateOutcome.OK, NOW)
    assert slow.failures == 0 and slow.last_reason is None
    assert slow.free(slow.paused_until) == 2  # ... and all of them again once a probe succeeds
