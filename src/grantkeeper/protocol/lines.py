"""What the refresh transaction tells an operator: its log lines, as `Log` steps. Pure.

One INFO line per attempt and per recovery decision (`-v`), WARNINGs for re-sends, takeovers and a store that
refused a commit. Every line carries fingerprints and ids as evidence, never a token.
"""

from __future__ import annotations

import logging

from grantkeeper.model import Attempt, Grant, LeaseHolder, Provider, RotationMode
from grantkeeper.protocol.steps import Log

__all__ = ["attempt_line", "committed", "decision", "resend_note", "store_refused", "took_over"]


def attempt_line(
    grant: Grant,
    provider: Provider,
    attempt: Attempt,
    outcome: str,
    latency: float,
    *,
    after: Grant | None = None,
    status: int | None = None,
) -> Log:
    """The one INFO line per refresh attempt (`-v`): grant, provider, generations, fingerprints, latency, outcome."""
    moved = after is not None and after.generation != grant.generation
    if moved and after:
        generation = f"generation {grant.generation} -> {after.generation}"
    else:
        generation = f"generation {grant.generation} unchanged"
    refresh = f"refresh token {grant.refresh_fp}"
    if after is not None and after.refresh_fp != grant.refresh_fp:
        refresh += f" -> {after.refresh_fp}"
    access = f", access token {after.access_fp}" if after is not None and after.access_fp else ""
    http = f" (HTTP {status})" if status is not None else ""
    evidence: dict[str, object] = {
        "grant": grant.name,
        "provider": provider.name,
        "attempt_id": attempt.id,
        "generation": grant.generation,
        "fingerprint": grant.refresh_fp,
        "latency": round(latency, 6),
        "outcome": outcome,
    }
    if after is not None:
        evidence.update(new_generation=after.generation, new_fingerprint=after.refresh_fp, access_fp=after.access_fp)
    return Log(
        logging.INFO,
        f"grant {grant.name!r} (provider {provider.name!r}): refresh attempt {attempt.id}{http} in {latency:.3f} s: "
        f"{outcome}; {generation}, {refresh}{access}",
        evidence,
    )


def decision(grant: Grant, what: str) -> Log:
    """The one INFO line per recovery decision (`-v`)."""
    return Log(
        logging.INFO,
        f"grant {grant.name!r} (generation {grant.generation}): {what}",
        {"grant": grant.name, "generation": grant.generation, "fingerprint": grant.refresh_fp},
    )


def committed(*, superseded: bool, stored: bool) -> str:
    """Where a successor went: the store, local recovery storage, or nowhere (another worker's was first)."""
    if superseded:
        return "superseded (another worker committed this generation first)"
    return "committed" if stored else "kept in local recovery storage (the store refused the commit)"


def resend_note(prior: Attempt, provider: Provider, now: float) -> str:
    """Why a possibly spent token is re-sent once, and what follows if it was spent."""
    age = now - prior.started_at
    if provider.rotation is RotationMode.NEVER:
        why = "the provider does not rotate refresh tokens, so re-sending is safe"
    elif age < provider.reuse_grace:
        why = f"it is {age:.1f} s old, inside the provider's {provider.reuse_grace:.0f} s reuse grace"
    else:
        why = (
            f"it is {age:.1f} s old and the provider's reuse grace is {provider.reuse_grace:.0f} s: if that attempt "
            "reached the provider, this re-send will be rejected and the grant is lost"
        )
    return (
        f"grant {prior.grant!r}: attempt {prior.id} by worker {prior.worker} may have spent refresh token "
        f"{prior.refresh_fp} without storing its replacement; re-sending once ({why})"
    )


def took_over(grant: Grant, dead: LeaseHolder, *, attempt_id: int, now: float) -> Log:
    """The claim took over the lease of a worker whose liveness signal was released."""
    return Log(
        logging.WARNING,
        f"grant {grant.name!r}: took over the lease of worker {dead.worker} (fence {dead.fence}), whose process "
        f"is gone (its liveness signal was released), {max(0.0, dead.expires_at - now):.1f} s before that "
        "lease would have expired",
        {
            "grant": grant.name,
            "worker": dead.worker,
            "fence": dead.fence,
            "lease_expires_at": dead.expires_at,
            "attempt_id": attempt_id,
        },
    )


def store_refused(grant: Grant, reason: str, *, attempt_id: int, worker: str) -> Log:
    """The store refused a commit; the successor goes to local recovery storage."""
    return Log(
        logging.WARNING,
        f"grant {grant.name!r}: the store could not be written ({reason}); keeping the new token set in local "
        "recovery storage until it can be committed",
        {"grant": grant.name, "generation": grant.generation + 1, "attempt_id": attempt_id, "worker": worker},
    )
