"""Both drivers hand back the lease of a refresh interrupted mid-flight (an exception the flow never sees), and
close as not sent an attempt whose request never started."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from grantkeeper import AttemptState
from grantkeeper import _failpoints as failpoints
from tests.keeper_fixtures import Face, add_grant_to

Sim = Callable[..., object]


class Interrupted(BaseException):
    """Not an `Exception`: the drivers do not feed it into the flow, so the flow is abandoned holding its lease."""


def _interrupt() -> None:
    raise Interrupted


@pytest.mark.anyio
async def test_an_interrupted_refresh_releases_its_lease_and_closes_the_unsent_attempt(
    keeper: Face, make_sim: Sim
) -> None:
    sim = make_sim()
    await add_grant_to(keeper, sim)
    failpoints.set_hook("before_send", _interrupt)
    with pytest.raises(Interrupted):
        await keeper.refresh("g")
    failpoints.clear_hooks()

    status = await keeper.status("g")
    assert status.lease is None
    assert [attempt.state for attempt in status.attempts] == [AttemptState.NOT_SENT]
    assert sim.stats.refresh_calls == 0  # type: ignore[attr-defined]
    # the token never left: the next refresh is a plain one (no re-send, nothing to verify)
    assert (await keeper.refresh("g")).generation == 2
    assert (await keeper.status("g")).attempts[0].resend_of is None
    assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]
