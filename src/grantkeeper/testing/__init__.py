"""Test helpers for grantkeeper users: a real OAuth token endpoint on loopback, with fault injection.

    from grantkeeper.testing import ProviderSimulator, DropAfterRotate

    with ProviderSimulator(rotation="always", reuse_grace=0) as sim:
        refresh_token = sim.issue_grant()
        sim.inject(DropAfterRotate())
        ...

See docs/simulator.md.
"""

from grantkeeper.testing.clock import FakeClock
from grantkeeper.testing.simulator import (
    Delay,
    DropAfterRotate,
    DropBeforeProcessing,
    Fault,
    HttpError,
    Malformed,
    ProviderSimulator,
    SimulatorStats,
)

__all__ = [
    "Delay",
    "DropAfterRotate",
    "DropBeforeProcessing",
    "FakeClock",
    "Fault",
    "HttpError",
    "Malformed",
    "ProviderSimulator",
    "SimulatorStats",
]
