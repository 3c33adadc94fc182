"""Helpers shared by the HTTP-client bridge tests; their fixtures are in tests/integration_fixtures.py.

The simulator's clock is a FakeClock the tests move: an access token the keeper (on real time) still trusts
can then be expired at the simulator's /resource, a real 401 ``invalid_token`` for a token the client
believed valid.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

from grantkeeper import Keeper
from tests.helpers import FAST_POLICY, add_grant

Sim = Callable[..., object]
EXPIRE_ALL = 7200.0  # past the simulator's default 3600 s access-token lifetime


@contextlib.contextmanager
def keeper_with_grant(url: str, sim: object) -> Iterator[Keeper]:
    """A keeper on `url` holding grant "g" at `sim`."""
    with Keeper.open(url, policy=FAST_POLICY) as keeper:
        add_grant(keeper, sim)
        yield keeper


@pytest.fixture
def keeper(keeper: Keeper, sim: object) -> Keeper:
    """The shared keeper (tests/keeper_fixtures.py) holding grant "g" at `sim`; a bridge's test module imports
    it as its `keeper`."""
    add_grant(keeper, sim)
    return keeper


def resource(sim: object) -> str:
    return sim.base_url + "/resource"  # type: ignore[attr-defined]


def refresh_calls(sim: object) -> int:
    return int(sim.stats.refresh_calls)  # type: ignore[attr-defined]
