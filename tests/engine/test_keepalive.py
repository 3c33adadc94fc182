"""Refresh tokens nearing idle or absolute expiry: keep-alive refresh or a warning, ahead of time."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import pytest

from grantkeeper import Keeper
from grantkeeper.stores import SQLiteStore
from grantkeeper.testing import FakeClock
from tests.helpers import FAST_POLICY, provider_for

Sim = Callable[..., object]
DAY = 86400.0


def _keeper(store: SQLiteStore, sim: object, clock: FakeClock, **ttl: float) -> Keeper:
    keeper = Keeper(store, clock=clock, policy=FAST_POLICY)
    keeper.add_provider(dataclasses.replace(provider_for(sim), **ttl))
    keeper.import_grant("g", provider="sim", refresh_token=sim.issue_grant())  # type: ignore[attr-defined]
    return keeper


def test_idle_expiry_triggers_keepalive_refresh_inside_margin(store: SQLiteStore, make_sim: Sim) -> None:
    """A grant unused for close to the provider's idle lifetime is refreshed; one far from it is left alone."""
    sim = make_sim()
    clock = FakeClock()
    with _keeper(store, sim, clock, refresh_idle_ttl=60 * DAY) as keeper:
        clock.advance(50 * DAY)
        assert keeper.keepalive(margin=7 * DAY) == []
        clock.advance(5 * DAY)
        results = keeper.keepalive(margin=7 * DAY)
        assert [(r.grant, r.action) for r in results] == [("g", "refreshed")]
        assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]
        assert keeper.keepalive(margin=7 * DAY) == []  # the refresh reset the idle clock


def test_absolute_expiry_warns_and_does_not_refresh(
    store: SQLiteStore, make_sim: Sim, caplog: pytest.LogCaptureFixture
) -> None:
    """Refreshing cannot extend an absolute lifetime: keepalive reports reconsent_needed and logs a warning."""
    sim = make_sim()
    clock = FakeClock()
    with (
        _keeper(store, sim, clock, refresh_absolute_ttl=365 * DAY, refresh_idle_ttl=90 * DAY) as keeper,
        caplog.at_level(logging.WARNING, logger="grantkeeper"),
    ):
        clock.advance(360 * DAY)
        results = keeper.keepalive(margin=7 * DAY)
    assert [(r.grant, r.action) for r in results] == [("g", "reconsent_needed")]
    assert "authorize again" in caplog.text
    assert sim.stats.refresh_calls == 0  # type: ignore[attr-defined]


def test_keepalive_reports_failures_per_grant(store: SQLiteStore, make_sim: Sim) -> None:
    """A revoked grant's keep-alive fails with its classified cause instead of stopping the run."""
    sim = make_sim()
    clock = FakeClock()
    with _keeper(store, sim, clock, refresh_idle_ttl=10 * DAY) as keeper:
        sim.revoke_family(keeper.store.get_grant("g").refresh_token.reveal())  # type: ignore[attr-defined, union-attr]
        clock.advance(9 * DAY)
        [result] = keeper.keepalive(margin=2 * DAY)
    assert result.action == "failed" and result.detail.startswith("revoked_or_expired")
