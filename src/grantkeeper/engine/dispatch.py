"""Which store transaction each store step of the protocol names: one table, used by both drivers.

A step maps to a store method and its arguments; the sync driver calls the method, the async driver awaits the
`AsyncStore`'s. Like psycopg's generators, which yield waits that ``wait()`` executes, the protocol never holds the
store itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from grantkeeper.protocol.steps import (
    ClaimGrant,
    Commit,
    Finish,
    Load,
    Record,
    Release,
    SaveRecovery,
    StoreStep,
    WaitForChange,
)

__all__ = ["store_call"]

Call = tuple[str, tuple[Any, ...], dict[str, Any]]


def _load(s: Load) -> Call:
    return "get_grant_and_provider", (s.name,), {}


def _claim(s: ClaimGrant) -> Call:
    return (
        "claim",
        (s.name,),
        {
            "worker": s.worker,
            "lease_ttl": s.lease_ttl,
            "now": s.now,
            "force": s.force,
            "seen_generation": s.seen_generation,
            "actor": s.actor,
        },
    )


def _record(s: Record) -> Call:
    return (
        "record_attempt",
        (s.lease,),
        {
            "generation": s.generation,
            "refresh_fp": s.refresh_fp,
            "resend_of": s.resend_of,
            "lease_ttl": s.lease_ttl,
            "now": s.now,
            "actor": s.actor,
            "try_number": s.try_number,
        },
    )


def _commit(s: Commit) -> Call:
    return (
        "commit",
        (s.lease,),
        {
            "attempt_id": s.attempt_id,
            "base": s.base,
            "update": s.update,
            "now": s.now,
            "latency": s.latency,
        },
    )


def _finish(s: Finish) -> Call:
    return (
        "finish",
        (s.lease,),
        {
            "attempt_id": s.attempt_id,
            "state": s.state,
            "outcome": s.outcome,
            "now": s.now,
            "mark_dead": s.mark_dead,
            "release": s.release,
            "report": s.report,
        },
    )


def _release(s: Release) -> Call:
    return "release", (s.lease,), {}


def _save_recovery(s: SaveRecovery) -> Call:
    return (
        "save_recovery",
        (s.name,),
        {
            "expected_generation": s.expected_generation,
            "attempt_id": s.attempt_id,
            "update": s.update,
            "now": s.now,
        },
    )


def _wait(s: WaitForChange) -> Call:
    return "wait_for_change", (s.name,), {"poll": s.poll, "longest": s.longest, "generation": s.generation}


_TABLE: dict[type[StoreStep], Callable[[Any], Call]] = {
    Load: _load,
    ClaimGrant: _claim,
    Record: _record,
    Commit: _commit,
    Finish: _finish,
    Release: _release,
    SaveRecovery: _save_recovery,
    WaitForChange: _wait,
}


def store_call(step: StoreStep) -> Call:
    """The store method `step` names, with its positional and keyword arguments."""
    return _TABLE[type(step)](step)
