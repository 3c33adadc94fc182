"""Pytest plugin for the HTTP-client bridge tests (``pytest_plugins = ["tests.integration_fixtures"]``): a
FakeClock and a provider simulator on it, so tests can expire at the resource server a token the keeper trusts."""

from __future__ import annotations

import pytest

from grantkeeper.testing.clock import FakeClock
from tests.integration_support import Sim


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(make_sim: Sim, clock: FakeClock) -> object:
    return make_sim(clock=clock.monotonic)
