"""`diagnose`: the cause of a grant's latest failure (or its health), with the evidence and the next step.

Pure: it reads a grant, its provider and its attempt history (newest first) and decides. The rules, in order:

1. A grant marked needs_reauth is explained by the attempt that killed it (lost_in_flight, reuse_detected or
   revoked_or_expired), or by its recorded error when retention has pruned that attempt. A rejected token that
   an earlier attempt had already spent (it was imported again) is a `stale_local_token`; an imported token
   refused within `FRESH_IMPORT` of its import, never accepted and before any known lifetime passed, is
   `never_accepted`: neither is a revocation.
2. Otherwise the newest attempt decides: a failure class (client_auth_failed, provider_unavailable,
   malformed_response, ...) is the diagnosis; one that may have spent the token with no answer (open while
   nobody live holds the lease, or ambiguous) is `in_flight`.
3. A stale_local_token within `STALE_MEMORY` is reported even if the refresh recovered from it: it is a local
   bug (something used a refresh token from a stale copy), and it stays one after the retry succeeded.
4. Otherwise (a commit last, or no attempt at all) the grant is `healthy`.

The JSON form (`Diagnosis.as_dict`) is stable: keys are only added, never renamed (docs/doctor.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from grantkeeper.model import Attempt, AttemptState, Grant, GrantState, LeaseHolder, OutcomeClass, Provider
from grantkeeper.model.lifetimes import refresh_token_ends
from grantkeeper.model.times import iso_utc

__all__ = ["CAUSES", "FRESH_IMPORT", "SCHEMA_VERSION", "STALE_MEMORY", "Diagnosis", "diagnose"]

SCHEMA_VERSION = 1
#: How long a stale_local_token stays the diagnosis after the refresh recovered from it.
STALE_MEMORY = 7 * 86400.0
#: An imported token refused this soon after its import, never accepted before, is `never_accepted`; later, an
#: unrecorded lifetime may have ended it, and the diagnosis stays revoked_or_expired.
FRESH_IMPORT = 7 * 86400.0

CAUSES = (
    "healthy",
    "stale_local_token",
    "lost_in_flight",
    "reuse_detected",
    "revoked_or_expired",
    "client_auth_failed",
    "provider_rejected",
    "provider_unavailable",
    "malformed_response",
    "in_flight",
    "configuration",
    "never_accepted",
)

_LATEST_FAILURE = {
    OutcomeClass.PROVIDER_UNAVAILABLE: "provider_unavailable",
    OutcomeClass.DEFERRED: "provider_unavailable",
    OutcomeClass.MALFORMED_RESPONSE: "malformed_response",
    OutcomeClass.CLIENT_AUTH_FAILED: "client_auth_failed",
    OutcomeClass.PROVIDER_REJECTED: "provider_rejected",
    OutcomeClass.CONFIGURATION: "configuration",
}
_DEAD = {OutcomeClass.LOST_IN_FLIGHT, OutcomeClass.REUSE_DETECTED, OutcomeClass.REVOKED_OR_EXPIRED}


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """What `grantkeeper doctor` prints. Fingerprints and ids only: never a token."""

    grant: str
    provider: str
    cause: str  # one of CAUSES
    summary: str  # one sentence
    next_step: str
    facts: tuple[str, ...]  # the evidence, one plain line each
    evidence: dict[str, Any] = field(default_factory=dict)  # the same evidence, structured (JSON)
    state: str = GrantState.ACTIVE.value
    generation: int = 0
    attempt_id: int | None = None  # the attempt the diagnosis is about
    diagnosed_at: float = 0.0

    @property
    def healthy(self) -> bool:
        return self.cause == "healthy"

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "grant": self.grant,
            "provider": self.provider,
            "cause": self.cause,
            "healthy": self.healthy,
            "state": self.state,
            "generation": self.generation,
            "summary": self.summary,
            "next_step": self.next_step,
            "facts": list(self.facts),
            "attempt_id": self.attempt_id,
            "evidence": self.evidence,
            "diagnosed_at": self.diagnosed_at,
        }


def when(epoch: float | None) -> str:
    """An epoch time as people read it in logs (`iso_utc`), or "never"."""
    return "never" if epoch is None else iso_utc(epoch)


def span(seconds: float) -> str:
    """A duration, short: 45 s, 12 min, 5.0 h, 3.2 days."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.1f} s" if seconds < 10 and seconds != int(seconds) else f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _who(a: Attempt) -> str:
    return f"worker {a.worker}" + (f" ({a.actor})" if a.actor else "")


def _attempt_facts(a: Attempt) -> dict[str, Any]:
    return {
        "id": a.id, "worker": a.worker, "actor": a.actor, "started_at": a.started_at, "finished_at": a.finished_at,
        "generation": a.generation, "refresh_fp": a.refresh_fp, "state": a.state.value,
        "outcome_class": a.outcome_class.value if a.outcome_class else None, "resend_of": a.resend_of,
    }  # fmt: skip


class _Doctor:
    def __init__(
        self, grant: Grant, provider: Provider, history: Sequence[Attempt], find: Callable[[int], Attempt | None],
        lease: LeaseHolder | None, now: float, alive: Callable[[str], bool | None],
        spent: Callable[[str], Attempt | None],
    ) -> None:  # fmt: skip
        self.grant, self.provider, self.history, self.lease, self.now = grant, provider, history, lease, now
        self.alive = alive
        self._spent = spent
        self._by_id = {a.id: a for a in history}
        self._find = find

    def attempt(self, attempt_id: object) -> Attempt | None:
        if not isinstance(attempt_id, int):
            return None
        return self._by_id.get(attempt_id) or self._find(attempt_id)

    def committed(self, generation: object) -> Attempt | None:
        """The attempt that committed `generation`, if history still has it."""
        for a in self.history:
            if a.new_generation == generation and a.state in (AttemptState.COMMITTED, AttemptState.RECOVERED):
                return a
        return None

    def result(
        self, cause: str, summary: str, next_step: str, facts: list[str], evidence: dict[str, Any],
        subject: Attempt | None = None,
    ) -> Diagnosis:  # fmt: skip
        if subject is not None:
            evidence = {"attempt": _attempt_facts(subject), **evidence}
        return Diagnosis(
            grant=self.grant.name, provider=self.provider.name, cause=cause, summary=summary, next_step=next_step,
            facts=tuple(facts), evidence=evidence, state=self.grant.state.value, generation=self.grant.generation,
            attempt_id=subject.id if subject else None, diagnosed_at=self.now,
        )  # fmt: skip

    # ------------------------------------------------------------------ the decision

    def run(self) -> Diagnosis:
        if self.grant.state is GrantState.NEEDS_REAUTH:
            dead = next((a for a in self.history if a.state is AttemptState.DEAD), None)
            if dead is not None and dead.outcome_class in _DEAD:
                return self.dead(dead)
            return self.dead_unrecorded()
        newest = self.history[0] if self.history else None
        last_commit = next((a for a in self.history if a.state in (AttemptState.COMMITTED, AttemptState.RECOVERED)),
                           None)  # fmt: skip
        refreshing = None
        if newest is not None and newest.state is AttemptState.OPEN and self.lease is not None \
                and self.lease.worker == newest.worker and self.alive(newest.worker) is not False:  # fmt: skip
            refreshing = newest
        elif newest is not None and newest.outcome_class in _LATEST_FAILURE:
            return getattr(self, _LATEST_FAILURE[newest.outcome_class])(newest)  # type: ignore[no-any-return]
        elif newest is not None and (newest.state.maybe_spent or newest.outcome_class is OutcomeClass.AMBIGUOUS):
            return self.in_flight(newest)
        stale = next((a for a in self.history if a.outcome_class is OutcomeClass.STALE_LOCAL_TOKEN), None)
        if stale is not None and self.now - stale.started_at < STALE_MEMORY:
            return self.stale_local_token(stale, last_commit)
        return self.healthy(last_commit, refreshing)

    def dead(self, dead: Attempt) -> Diagnosis:
        assert dead.outcome_class is not None
        if dead.outcome_class is OutcomeClass.REVOKED_OR_EXPIRED:
            spender = self.spent_before(dead)
            if spender is not None:
                return self.reimported_spent(dead, spender)
            if self.imported_never_accepted(dead):
                return self.never_accepted(dead)
        return {
            OutcomeClass.LOST_IN_FLIGHT: self.lost_in_flight,
            OutcomeClass.REUSE_DETECTED: self.reuse_detected,
            OutcomeClass.REVOKED_OR_EXPIRED: self.revoked_or_expired,
        }[dead.outcome_class](dead)

    def spent_before(self, dead: Attempt) -> Attempt | None:
        """The earlier attempt that spent the token `dead` was refused with: it sent the same token and committed a
        different successor, so the token can only have come back by being imported again."""
        for a in self.history:
            if a.id < dead.id and a.refresh_fp == dead.refresh_fp and a.generation < dead.generation and (
                a.rotated or (a.state is AttemptState.RECOVERED and a.received_fp not in (None, a.refresh_fp))
            ):  # fmt: skip
                return a
        remembered = self._spent(dead.refresh_fp)  # beyond the slice read, or pruned from the history
        if remembered is not None and remembered.id < dead.id and remembered.generation < dead.generation:
            return remembered
        return None

    def imported_never_accepted(self, dead: Attempt) -> bool:
        """`dead` was refused the grant's current token, which was imported (not received from a rotation), no
        refresh with it ever succeeded, and none of its known lifetimes had passed: the provider never took it."""
        g = self.grant
        if dead.refresh_fp != g.refresh_fp or g.refresh_issued_at is None or g.refresh_issued_at != g.created_at:
            return False
        if dead.started_at - g.refresh_issued_at > FRESH_IMPORT:
            return False
        for a in self.history:
            accepted = a.state in (AttemptState.COMMITTED, AttemptState.RECOVERED)
            if accepted and dead.refresh_fp in (a.refresh_fp, a.received_fp):
                return False
        return not any(e.deadline <= dead.started_at for e in refresh_token_ends(g, self.provider))

    # ------------------------------------------------------------------ one method per cause

    def healthy(self, last_commit: Attempt | None, refreshing: Attempt | None = None) -> Diagnosis:
        g, p = self.grant, self.provider
        facts = [f"generation {g.generation}, refresh token {g.refresh_fp}"]
        evidence: dict[str, Any] = {"refresh_fp": g.refresh_fp, "access_expires_at": g.expires_at,
                                    "refreshed_at": g.refreshed_at, "created_at": g.created_at}  # fmt: skip
        if last_commit is not None:
            rotated = {True: "rotated", False: "not rotated", None: "rotation unknown"}[last_commit.rotated]
            facts.append(f"last refresh: attempt {last_commit.id} by {_who(last_commit)} at "
                         f"{when(last_commit.finished_at)} ({rotated})")  # fmt: skip
            evidence["last_commit"] = _attempt_facts(last_commit)
        else:
            facts.append(f"not refreshed since it was imported at {when(g.created_at)}")
        if g.expires_at is not None:
            left = g.expires_at - self.now
            facts.append(f"access token {g.access_fp} " + (f"valid for {span(left)}" if left > 0 else "expired; the "
                         "next call refreshes"))  # fmt: skip
        facts.extend(self.lifetime_facts(self.now, evidence))
        if refreshing is not None:
            facts.append(f"being refreshed now: attempt {refreshing.id} by {_who(refreshing)}")
            evidence["refreshing"] = _attempt_facts(refreshing)
        failures = [a for a in self.history if a.outcome_class is not None and a.outcome_class.is_failure]
        if failures:
            f = failures[0]
            facts.append(f"last failure: {f.outcome_class} at {when(f.started_at)} (attempt {f.id}), since recovered")
        return self.result(
            "healthy", f"grant {g.name!r} is healthy (generation {g.generation}, provider {p.name!r})",
            "nothing to do", facts, evidence,
        )  # fmt: skip

    def lifetime_facts(self, at: float, evidence: dict[str, Any]) -> list[str]:
        """The refresh token's known ends (`refresh_token_ends`: idle, absolute, stated) as of time `at`."""
        g, p = self.grant, self.provider
        facts = []
        if g.refreshed_at is not None:
            evidence["idle_seconds"] = at - g.refreshed_at
        if g.created_at is not None:
            evidence["consent_age_seconds"] = at - g.created_at
        ends = refresh_token_ends(g, p)
        evidence["ends"] = [{"kind": e.kind, "deadline": e.deadline, "renewable": e.renewable} for e in ends]
        for e in ends:
            if e.kind == "idle":
                facts.append(f"refresh token unused for {span(evidence['idle_seconds'])} of the provider's "
                             f"{span(e.deadline - (g.refreshed_at or e.deadline))} idle lifetime")  # fmt: skip
            elif e.kind == "absolute":
                facts.append(f"consent {span(evidence['consent_age_seconds'])} old of the provider's "
                             f"{span(e.deadline - (g.created_at or e.deadline))} absolute lifetime")  # fmt: skip
            else:
                facts.append(f"the provider said this refresh token expires at {when(e.deadline)}")
        return facts

    def stale_local_token(self, stale: Attempt, last_commit: Attempt | None) -> Diagnosis:
        g = self.grant
        current_gen = stale.evidence.get("current_generation")
        current_fp = stale.evidence.get("current_fingerprint")
        facts = [
            f"attempt {stale.id} by {_who(stale)} at {when(stale.started_at)} sent refresh token {stale.refresh_fp} "
            f"of generation {stale.generation}",
            f"the store already held generation {current_gen} (refresh token {current_fp})",
        ]
        evidence: dict[str, Any] = {"sent_generation": stale.generation, "sent_fp": stale.refresh_fp,
                                    "current_generation": current_gen, "current_fp": current_fp}  # fmt: skip
        committer = self.committed(current_gen)
        if committer is not None:
            facts.append(f"generation {current_gen} was committed by attempt {committer.id}, {_who(committer)}, at "
                         f"{when(committer.finished_at)}")  # fmt: skip
            evidence["committed_by"] = _attempt_facts(committer)
        else:
            facts.append(f"generation {current_gen} was not committed by a refresh in the kept history: it was "
                         f"imported (grant created {when(g.created_at)}) or its attempt was pruned")  # fmt: skip
        recovered = last_commit is not None and last_commit.id > stale.id and g.state is GrantState.ACTIVE
        facts.append(
            f"since then attempt {last_commit.id} by {_who(last_commit)} committed generation "
            f"{last_commit.new_generation} with the latest token" if recovered and last_commit is not None
            else "the grant was not refreshed since"
        )  # fmt: skip
        return self.result(
            "stale_local_token",
            f"grant {g.name!r}: a refresh token older than the store's was sent. This is a local state bug (a stale "
            "copy of the token was used), not a revocation",
            "find the code path that kept or restored an old refresh token (a cache, a backup restore, a copy of the "
            "store, a second tool holding its own copy) and make it read the store; the grant itself "
            + ("is healthy" if recovered else "was left active"),
            facts, evidence, stale,
        )  # fmt: skip

    def lost_in_flight(self, dead: Attempt) -> Diagnosis:
        g, p = self.grant, self.provider
        spender = self.attempt(dead.evidence.get("spent_by_attempt", dead.resend_of))
        facts = [f"attempt {dead.id} by {_who(dead)} at {when(dead.started_at)} re-sent refresh token "
                 f"{dead.refresh_fp} (generation {dead.generation}); the provider said invalid_grant"]  # fmt: skip
        if dead.evidence.get("not_resent"):
            facts = [f"attempt {dead.id} by {_who(dead)} at {when(dead.started_at)} did not re-send refresh token "
                     f"{dead.refresh_fp} (generation {dead.generation}): the reuse grace had passed"]  # fmt: skip
        evidence: dict[str, Any] = {"rejected_attempt": dead.id, "fingerprint": dead.refresh_fp}
        if spender is not None:
            how = {AttemptState.OPEN: "its worker died before recording an answer",
                   AttemptState.AMBIGUOUS: f"it got no usable answer ({spender.outcome})",
                   AttemptState.ABANDONED: "it was abandoned"}.get(spender.state, spender.state.value)  # fmt: skip
            gap = dead.started_at - spender.started_at
            facts.append(f"the token was spent by attempt {spender.id}, {_who(spender)}, at "
                         f"{when(spender.started_at)}: {how}")  # fmt: skip
            grace = p.reuse_grace
            facts.append(
                f"the re-send came {span(gap)} later; the provider's reuse grace is {span(grace)}: "
                + ("too late for the grace window to save it" if gap >= grace else
                   "inside the grace window, so the provider refused it for another reason (revocation?)")
            )  # fmt: skip
            evidence.update(spent_by=_attempt_facts(spender), resend_delay=gap, reuse_grace=grace)
        else:
            facts.append(f"the spending attempt {dead.resend_of} is no longer in the kept history")
        return self.result(
            "lost_in_flight",
            f"grant {g.name!r} was lost in flight: an earlier attempt spent its refresh token and never stored the "
            "replacement",
            "re-authorize and re-import the grant; then look at the spending worker's logs around that time (a crash, "
            "a timeout shorter than the provider's response time, or a kill during deploys)",
            facts, evidence, dead,
        )  # fmt: skip

    def reuse_detected(self, dead: Attempt) -> Diagnosis:
        g = self.grant
        facts = [f"attempt {dead.id} by {_who(dead)} at {when(dead.started_at)}: the provider rejected refresh "
                 f"token {dead.refresh_fp} (generation {dead.generation})"]  # fmt: skip
        evidence: dict[str, Any] = {"rejected_attempt": dead.id}
        stale = self.attempt(dead.evidence.get("stale_attempt"))
        first = self.attempt(dead.evidence.get("recent_resend_of"))
        second = self.attempt(dead.evidence.get("recent_resend"))
        if stale is not None:
            first = self.committed(stale.generation + 1)
            second = stale
            facts.append(f"just before, attempt {stale.id} by {_who(stale)} sent the already spent token "
                         f"{stale.refresh_fp} of generation {stale.generation} (a stale local copy)")  # fmt: skip
        pair = [a for a in (first, second) if a is not None]
        for a in pair:
            facts.append(f"used token {a.refresh_fp}: attempt {a.id}, {_who(a)}, at {when(a.started_at)} "
                         f"({a.state.value})")  # fmt: skip
        evidence["used_by"] = [_attempt_facts(a) for a in pair]
        return self.result(
            "reuse_detected",
            f"grant {g.name!r}: the provider saw one refresh token used twice and revoked the whole grant",
            "re-authorize and re-import the grant; "
            + ("find what kept the stale copy of the token" if stale is not None else
               "if the first use was a crash or timeout, a provider reuse grace (if offered) would have saved it"),
            facts, evidence, dead,
        )  # fmt: skip

    def revoked_or_expired(self, dead: Attempt) -> Diagnosis:
        g, p = self.grant, self.provider
        facts = [f"attempt {dead.id} by {_who(dead)} at {when(dead.started_at)} sent the latest refresh token "
                 f"{dead.refresh_fp} (generation {dead.generation}); the provider answered invalid_grant"
                 + (f": {dead.error_description}" if dead.error_description else "")]  # fmt: skip
        evidence: dict[str, Any] = {"rejected_attempt": dead.id, "fingerprint": dead.refresh_fp}
        facts.extend(self.lifetime_facts(dead.started_at, evidence))
        passed = sorted((e for e in refresh_token_ends(g, p) if e.deadline <= dead.started_at),
                        key=lambda e: e.deadline)  # fmt: skip
        if passed:
            kind = passed[0].kind
            why = {"idle": "its idle lifetime passed (unused too long)", "absolute": "its absolute lifetime passed",
                   "stated": "the expiry the provider stated for it passed"}[kind]  # fmt: skip
            evidence["reason"] = {"idle": "idle_lifetime", "absolute": "absolute_lifetime", "stated": "stated_expiry"}[
                kind
            ]
        elif evidence["ends"]:
            why, evidence["reason"] = (
                "it was revoked or the consent withdrawn (its known lifetimes had not passed)",
                ("revoked"),
            )
        else:
            why, evidence["reason"] = ("it was revoked, the consent withdrawn, or a lifetime this provider's "
                                       "configuration does not record passed"), "unknown"  # fmt: skip
        return self.result(
            "revoked_or_expired",
            f"grant {g.name!r}: the provider rejected the latest refresh token: {why}",
            "have the user authorize again and re-import the grant"
            + ("; run 'grantkeeper keepalive' daily so idle grants are refreshed in time"
               if evidence["reason"] == "idle_lifetime" else ""),
            facts, evidence, dead,
        )  # fmt: skip

    def never_accepted(self, dead: Attempt) -> Diagnosis:
        g, p = self.grant, self.provider
        tries = [a for a in self.history if a.refresh_fp == dead.refresh_fp and a.id <= dead.id]
        facts = [
            f"refresh token {dead.refresh_fp} was imported at {when(g.created_at)} (generation {dead.generation}); "
            f"no refresh with it ever succeeded ({len(tries)} attempt(s) sent it)",
            f"attempt {dead.id} by {_who(dead)} at {when(dead.started_at)} sent it; the provider answered "
            "invalid_grant" + (f": {dead.error_description}" if dead.error_description else ""),
            f"provider {p.name!r}, client id {p.client_id!r}: none of the token's known lifetimes had passed",
        ]
        evidence: dict[str, Any] = {"rejected_attempt": dead.id, "fingerprint": dead.refresh_fp,
                                    "imported_at": g.created_at, "attempts_with_token": len(tries)}  # fmt: skip
        return self.result(
            "never_accepted",
            f"grant {g.name!r}: the imported token was never accepted: the provider refused the refresh token "
            "imported for it on its first use. Check what was imported; this is not a revocation",
            f"check what was imported: it must be a refresh token that provider {p.name!r} issued to client id "
            f"{p.client_id!r} (not an access token, an ID token, an authorization code, a token of another client "
            "or environment, or one already used elsewhere); then import the right one with 'grantkeeper grant "
            f"import {g.name} --provider {p.name} --replace', or run 'grantkeeper connect {g.name} --provider "
            f"{p.name} --replace'. If it was the right token, the consent was revoked before its first use: have the "
            "user authorize again",
            facts, evidence, dead,
        )  # fmt: skip

    def reimported_spent(self, dead: Attempt, spender: Attempt) -> Diagnosis:
        g = self.grant
        facts = [
            f"attempt {dead.id} by {_who(dead)} at {when(dead.started_at)} sent refresh token {dead.refresh_fp} "
            f"(generation {dead.generation}); the provider answered invalid_grant",
            f"that token was spent by attempt {spender.id}, "
            + (_who(spender) if spender.worker else "since pruned from the kept history")
            + f", at {when(spender.started_at)}: the provider answered it with a new refresh token (generation "
            f"{spender.generation} -> {spender.generation + 1})",
            f"it came back by being imported again at {when(g.created_at)} (a backup, an old export or file)",
            "a provider that detects reuse revokes the whole grant when it sees a spent token again, so the token "
            "the import replaced is probably dead too",
        ]
        evidence: dict[str, Any] = {"rejected_attempt": dead.id, "fingerprint": dead.refresh_fp,
                                    "spent_by": _attempt_facts(spender), "imported_at": g.created_at}  # fmt: skip
        return self.result(
            "stale_local_token",
            f"grant {g.name!r}: a refresh token that grantkeeper had already spent was imported again and sent. "
            "This is a stale local copy of the token, not a revocation",
            "have the user authorize again and import the new token; find where the old copy came from and "
            "delete it ('grantkeeper grant import' now refuses tokens its history shows spent)",
            facts, evidence, dead,
        )  # fmt: skip

    def dead_unrecorded(self) -> Diagnosis:
        g = self.grant
        return self.result(
            "revoked_or_expired" if not g.last_error or g.last_error not in CAUSES else g.last_error,
            f"grant {g.name!r} needs re-authorization (last error: {g.last_error or 'unknown'})",
            "have the user authorize again and re-import the grant",
            [f"marked needs_reauth at {when(g.last_error_at)}; the attempt that decided it is no longer in the kept "
             "history"], {"last_error": g.last_error, "last_error_at": g.last_error_at},
        )  # fmt: skip

    def client_auth_failed(self, a: Attempt) -> Diagnosis:
        p = self.provider
        facts = [f"attempt {a.id} by {_who(a)} at {when(a.started_at)}: HTTP {a.http_status} {a.error_code}"
                 + (f" ({a.error_description})" if a.error_description else ""),
                 f"client id {p.client_id!r}, authentication method {p.auth_method.value}",
                 f"refresh token {a.refresh_fp} (generation {a.generation}) was not consumed"]  # fmt: skip
        return self.result(
            "client_auth_failed",
            f"provider {p.name!r} rejected the client credentials; grant {self.grant.name!r} is untouched",
            "fix the client id, secret or authentication method with 'grantkeeper provider add' (same name "
            "replaces it); the grant works again at the next refresh",
            facts, {"error_code": a.error_code, "http_status": a.http_status, "client_id": p.client_id,
                    "auth_method": p.auth_method.value}, a,
        )  # fmt: skip

    def provider_rejected(self, a: Attempt) -> Diagnosis:
        facts = [f"attempt {a.id} by {_who(a)} at {when(a.started_at)}: HTTP {a.http_status} {a.error_code}"
                 + (f" ({a.error_description})" if a.error_description else "")]  # fmt: skip
        return self.result(
            "provider_rejected",
            f"provider {self.provider.name!r} refused the refresh of grant {self.grant.name!r} with {a.error_code}; "
            "the grant was not changed",
            "check the provider configuration (scopes, grant type allowed for this client)",
            facts, {"error_code": a.error_code, "http_status": a.http_status}, a,
        )  # fmt: skip

    def provider_unavailable(self, a: Attempt) -> Diagnosis:
        run = []
        for b in self.history:
            if b.outcome_class not in (OutcomeClass.PROVIDER_UNAVAILABLE, OutcomeClass.DEFERRED):
                break
            run.append(b)
        answers = sorted({(f"HTTP {b.http_status}" if b.http_status else (b.outcome or "no answer")) for b in run})
        facts = [f"{len(run)} attempt(s) since the last success failed without spending the token, the newest "
                 f"{a.id} by {_who(a)} at {when(a.started_at)}", "answers: " + "; ".join(answers)]  # fmt: skip
        return self.result(
            "provider_unavailable",
            f"provider {self.provider.name!r} could not be reached or answered with a temporary error; grant "
            f"{self.grant.name!r} is intact",
            "retry later; check the provider's status page and this host's network if it persists",
            facts, {"failed_attempts": len(run), "answers": answers}, a,
        )  # fmt: skip

    def malformed_response(self, a: Attempt) -> Diagnosis:
        spent = a.state is AttemptState.AMBIGUOUS
        facts = [f"attempt {a.id} by {_who(a)} at {when(a.started_at)}: HTTP {a.http_status}, {a.outcome}"]
        if spent:
            facts.append("a 200 that cannot be read may still have rotated the token: the next refresh re-sends it "
                         f"(provider reuse grace {span(self.provider.reuse_grace)})")  # fmt: skip
        return self.result(
            "malformed_response",
            f"provider {self.provider.name!r} answered the refresh of grant {self.grant.name!r} with something "
            "that is not a token response; nothing was stored",
            "check the token URL (a proxy or login page answering instead?) and the provider's status",
            facts, {"http_status": a.http_status, "maybe_spent": spent}, a,
        )  # fmt: skip

    def configuration(self, a: Attempt) -> Diagnosis:
        return self.result(
            "configuration",
            f"grant {self.grant.name!r} could not be refreshed: the client secret for provider "
            f"{self.provider.name!r} was not available; nothing was sent",
            "set the environment variable the provider names, or store the secret with 'grantkeeper provider add'",
            [f"attempt {a.id} by {_who(a)} at {when(a.started_at)}: {a.outcome}"], {}, a,
        )  # fmt: skip

    def in_flight(self, a: Attempt) -> Diagnosis:
        p = self.provider
        age = self.now - a.started_at
        how = (
            "its worker stopped before recording an answer"
            if a.state is AttemptState.OPEN
            else (f"no usable answer ({a.outcome})")
        )
        if self.alive(a.worker) is False:
            how += " (its process is gone: its liveness signal was released)"
        facts = [f"attempt {a.id} by {_who(a)} at {when(a.started_at)} may have spent refresh token "
                 f"{a.refresh_fp} (generation {a.generation}): {how}"]  # fmt: skip
        if p.rotation.value == "never":
            verdict = "the provider does not rotate refresh tokens, so the re-send is safe"
        elif age < p.reuse_grace:
            verdict = (
                f"it is {span(age)} old, inside the provider's {span(p.reuse_grace)} reuse grace: a re-send now "
                "should get the successor"
            )
        else:
            verdict = (f"it is {span(age)} old and the provider's reuse grace is {span(p.reuse_grace)}: if it reached "
                       "the provider, the re-send will be refused and the grant is lost")  # fmt: skip
        facts.append(f"the next refresh re-sends it once; {verdict}")
        return self.result(
            "in_flight",
            f"grant {self.grant.name!r}: an attempt may have spent the refresh token without storing its replacement",
            "run 'grantkeeper refresh NAME' now (sooner is better inside a grace window); if it fails as "
            "lost_in_flight, re-authorize",
            facts, {"age": age, "reuse_grace": p.reuse_grace, "rotation": p.rotation.value}, a,
        )  # fmt: skip


def diagnose(
    grant: Grant, provider: Provider, history: Sequence[Attempt], *, now: float,
    find: Callable[[int], Attempt | None] = lambda _id: None, lease: LeaseHolder | None = None,
    alive: Callable[[str], bool | None] = lambda _worker: None,
    spent: Callable[[str], Attempt | None] = lambda _fingerprint: None,
) -> Diagnosis:  # fmt: skip
    """Diagnose `grant` from its attempt `history` (newest first). `find` looks up an attempt the history
    slice does not contain (the store's `get_attempt`); `lease` is the current lease holder, if any; `alive`
    tells whether a worker's process still runs (None: cannot tell, e.g. another host); `spent` finds the
    attempt that spent a token by its fingerprint, also once retention pruned it (the store's `spent_by`)."""
    return _Doctor(grant, provider, history, find, lease, now, alive, spent).run()
