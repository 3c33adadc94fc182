"""Both drivers hand back the lease of a refresh interrupted mid-flight (an exception the flow never sees)."""

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
async def test_an_interrupted_refresh_releases_its_lease_and_leaves_the_attempt_open(
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
    assert [attempt.state for attempt in status.attempts] == [AttemptState.OPEN]
    assert sim.stats.refresh_calls == 0  # type: ignore[attr-defined]
    # the open attempt may have spent the token: the next refresh re-sends it (2), then refreshes once more (3)
    assert (await keeper.refresh("g")).generation == 3
    assert (await keeper.status("g")).attempts[1].resend_of == status.attempts[0].id
