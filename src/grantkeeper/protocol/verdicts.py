"""What each kind of provider answer means for the attempt that got it: the failure table as pure functions.

Each function takes the facts of one exchange (`Exchange`) and returns a `Verdict`: the steps that close the
attempt (its `Finish`, its log line, a `Release`) in the order they are taken, and what the transaction does
next (`Raise` an error, `Retry` after a backoff, `Resend` the same token once, `SendLatest` token the store holds,
or `Proceed`). `grantkeeper.protocol.refresh` only sequences them. Error messages are built by the error classes
(`grantkeeper._exceptions`); log lines by `grantkeeper.protocol.lines`.

| answer | attempt state | next |
|---|---|---|
| success (`Success`) | committed | serve it; a re-send's successor is refreshed once more |
| malformed, with a new refresh token | committed | `Raise` malformed_response (the token was kept) |
| malformed, without | ambiguous (2xx) / rejected | `Raise` malformed_response |
| invalid_grant, stale local token | rejected | `SendLatest` once, else `Raise` |
| invalid_grant, dead (revoked, lost, reuse) | dead, grant marked | `Raise` |
| other OAuth error | rejected | `Raise` |
| transient (5xx, 429, 408) | rejected | `Retry` |
| not sent | not sent | `Retry` |
| ambiguous (no answer after sending) | ambiguous | `Resend` once, else `Raise` provider_unavailable |
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TypedDict

from grantkeeper._exceptions import (
    ConfigurationError,
    GrantkeeperError,
    LeaseTimeout,
    LostInFlight,
    MalformedResponse,
    ProviderUnavailable,
    StaleLocalToken,
)
from grantkeeper.model import (
    Attempt,
    AttemptReport,
    AttemptState,
    Grant,
    GrantState,
    Lease,
    OutcomeClass,
    Provider,
    RotationMode,
)
from grantkeeper.model.claims import Claim, GrantUpdate
from grantkeeper.model.exchange import Ambiguous, NotSent, SendResult
from grantkeeper.protocol import lines
from grantkeeper.protocol.answers import Malformed, OAuthFailure, Success, Transient, refresh_token_ok
from grantkeeper.protocol.classify import classify_invalid_grant, classify_other
from grantkeeper.protocol.policy import RefreshPolicy
from grantkeeper.protocol.steps import Finish, Log, Release, Step

__all__ = [
    "Exchange",
    "Proceed",
    "Raise",
    "Refreshed",
    "Resend",
    "Retry",
    "SendLatest",
    "Then",
    "Verdict",
    "gave_up",
    "invalid_grant",
    "judge",
    "kept_successor",
    "no_refresh_token",
    "opening",
    "success_update",
    "successor_only",
    "unsendable",
]


@dataclass(frozen=True, slots=True)
class Refreshed:
    """The flow's result: a grant with a usable access token, and whether it is only in recovery storage.

    `issued`: the grant holds what this flow's own token request just obtained (not another worker's result), so
    its access token may be handed to the caller that asked even if it lives less than the skew (it is served
    once, never cached past its expiry, and never triggers a second refresh for the same caller).
    """

    grant: Grant
    provider: Provider
    committed: bool = True
    issued: bool = False


@dataclass(frozen=True, slots=True)
class Exchange:
    """One send under the lease and what came of it: the facts every verdict is judged on."""

    grant: Grant  # as sent
    provider: Provider
    lease: Lease
    attempt: Attempt
    worker: str
    sent_at: float
    now: float  # when the result arrived
    result: SendResult

    @property
    def latency(self) -> float:
        return self.now - self.sent_at

    def finish(self, state: AttemptState, outcome: str, report: AttemptReport, **options: bool) -> Finish:
        """Close this exchange's attempt now (`options`: `release`, `mark_dead`)."""
        return Finish(self.lease, self.attempt.id, state, outcome, self.now, report=report, **options)

    def line(self, outcome: str, *, status: int | None = None, after: Grant | None = None) -> Log:
        return lines.attempt_line(
            self.grant, self.provider, self.attempt, outcome, self.latency, after=after, status=status
        )

    def evidence(self) -> dict[str, object]:
        grant = self.grant
        return {
            "grant": grant.name,
            "generation": grant.generation,
            "attempt_id": self.attempt.id,
            "fingerprint": grant.refresh_fp,
            "worker": self.worker,
        }


@dataclass(frozen=True, slots=True)
class Raise:
    error: GrantkeeperError


@dataclass(frozen=True, slots=True)
class Retry:
    """Transient and not spent: back off and send again while tries and time remain."""

    failure: str
    retry_after: float | None


@dataclass(frozen=True, slots=True)
class Resend:
    """No answer after sending: send the same, possibly spent, token once more under a new attempt."""


@dataclass(frozen=True, slots=True)
class SendLatest:
    """A stale local token was refused: send the store's `grant` under a new attempt."""

    grant: Grant


@dataclass(frozen=True, slots=True)
class Proceed:
    """Nothing stands in the way: send."""


Then = Raise | Retry | Resend | SendLatest | Proceed


@dataclass(frozen=True, slots=True)
class Verdict:
    steps: tuple[Step, ...]
    then: Then


def report(
    kind: OutcomeClass,
    *,
    error: GrantkeeperError | None = None,
    oauth: OAuthFailure | None = None,
    status: int | None = None,
    latency: float | None = None,
    facts: dict[str, object] | None = None,
    **evidence: object,
) -> AttemptReport:
    """The history's record of an attempt that did not commit: the class, the provider's answer, the facts."""
    facts = {**(error.evidence() if error is not None else {}), **(facts or {}), **evidence}
    return AttemptReport(
        kind,
        error_code=oauth.error if oauth else None,
        error_description=oauth.description if oauth else None,
        http_status=oauth.status if oauth else status,
        latency=latency,
        evidence=facts,
    )


# Before sending.


def opening(claim: Claim, *, worker: str, policy: RefreshPolicy, now: float) -> Verdict:
    """What the claim's facts say before anything is sent: a takeover to note, another host's possibly spent
    token to leave alone for now (`LeaseTimeout`), one past the provider's reuse grace (`LostInFlight`), or one
    to re-send."""
    grant, lease, attempt, prior = claim.grant, claim.lease, claim.attempt, claim.prior
    assert lease is not None
    assert attempt is not None
    noted: tuple[Step, ...] = ()
    if claim.took_over is not None:
        noted = (lines.took_over(grant, claim.took_over, attempt_id=attempt.id, now=now),)
    if prior is None:
        return Verdict(noted, Proceed())
    if _must_wait_to_adopt(claim, prior, worker=worker, policy=policy, now=now):
        return _after(noted, _deferred(claim, prior, lease, attempt, policy=policy, now=now))
    if policy.grace_over(claim.provider, spent_since=claim.spent_since or prior.started_at, now=now):
        return _after(noted, _grace_passed(claim, prior, lease, attempt, worker=worker, now=now))
    resend = Log(
        logging.WARNING,
        lines.resend_note(prior, claim.provider, now),
        {
            "grant": grant.name,
            "generation": grant.generation,
            "fingerprint": grant.refresh_fp,
            "attempt_id": attempt.id,
            "resend_of": prior.id,
            "prior_worker": prior.worker,
        },
    )
    return Verdict((*noted, resend), Proceed())


def _after(steps: tuple[Step, ...], verdict: Verdict) -> Verdict:
    return Verdict(steps + verdict.steps, verdict.then)


def _must_wait_to_adopt(claim: Claim, prior: Attempt, *, worker: str, policy: RefreshPolicy, now: float) -> bool:
    """Re-sending another host's possibly spent token is risky (rotating provider, grace over) and that host
    may still commit the successor it keeps locally: wait `adopt_after` from its attempt first."""
    if claim.shared_recovery or prior.worker == worker or claim.provider.rotation is RotationMode.NEVER:
        return False
    age = now - prior.started_at
    return age >= claim.provider.reuse_grace and age < policy.adopt_after


class _MaybeSpent(TypedDict):
    """The token an earlier attempt may have spent, and that attempt: what each error about it names."""

    grant: str
    generation: int
    fingerprint: str | None
    attempt_id: int


def _maybe_spent(grant: Grant, prior: Attempt) -> _MaybeSpent:
    return _MaybeSpent(grant=grant.name, generation=grant.generation, fingerprint=grant.refresh_fp, attempt_id=prior.id)


def _deferred(
    claim: Claim, prior: Attempt, lease: Lease, attempt: Attempt, *, policy: RefreshPolicy, now: float
) -> Verdict:
    grant = claim.grant
    wait = prior.started_at + policy.adopt_after - now
    finish = Finish(
        lease,
        attempt.id,
        AttemptState.NOT_SENT,
        f"deferred: attempt {prior.id} may still commit",
        now,
        report=report(OutcomeClass.DEFERRED, prior_attempt=prior.id, prior_worker=prior.worker),
    )
    note = lines.decision(
        grant,
        f"not re-sending the token attempt {prior.id} may have spent for another {wait:.0f} s "
        f"(worker {prior.worker} may still commit its successor)",
    )
    error = LeaseTimeout.deferred(**_maybe_spent(grant, prior), worker=prior.worker, wait=wait)
    return Verdict((finish, note), Raise(error))


def _grace_passed(claim: Claim, prior: Attempt, lease: Lease, attempt: Attempt, *, worker: str, now: float) -> Verdict:
    """No re-send: the token's first possible use is older than the provider's reuse grace, so a re-send would be
    refused and, if the token was spent, taken as reuse (the provider revokes the grant)."""
    grant = claim.grant
    lost = LostInFlight.past_grace(
        **_maybe_spent(grant, prior),
        prior_worker=prior.worker,
        worker=worker,
        age=now - (claim.spent_since or prior.started_at),
        grace=claim.provider.reuse_grace,
    )
    finish = Finish(
        lease,
        attempt.id,
        AttemptState.DEAD,
        lost.code,
        now,
        mark_dead=True,
        report=report(
            OutcomeClass.LOST_IN_FLIGHT,
            error=lost,
            spent_by_attempt=prior.id,
            not_resent=True,
            spent_since=claim.spent_since,
        ),
    )
    return Verdict((finish,), Raise(lost))


def no_refresh_token(grant: Grant, lease: Lease, attempt: Attempt, *, now: float) -> Verdict:
    finish = Finish(
        lease, attempt.id, AttemptState.NOT_SENT, "no refresh token", now, report=report(OutcomeClass.CONFIGURATION)
    )
    return Verdict((finish,), Raise(ConfigurationError.no_refresh_token(grant=grant.name)))


def unsendable(lease: Lease, attempt: Attempt, error: ConfigurationError, *, now: float) -> Finish:
    """The sender could not build the request (no client credentials, TLS verification failed): nothing was sent."""
    return Finish(lease, attempt.id, AttemptState.NOT_SENT, error.code, now, report=report(OutcomeClass.CONFIGURATION))


# After sending: one function per kind of answer.


def judge(
    exchange: Exchange, answer: NotSent | Ambiguous | Malformed | OAuthFailure | Transient, *, give_up: bool
) -> Verdict:
    """The verdict on an answer that needs nothing more from the store (`give_up`: an ambiguous send is not
    re-sent). A malformed answer with a successor and invalid_grant are judged after a store step."""
    match answer:
        case NotSent():
            return not_sent(exchange, answer)
        case Ambiguous():
            return ambiguous(exchange, answer, give_up=give_up)
        case Malformed():
            return malformed(exchange, answer)
        case OAuthFailure():
            return refused(exchange, answer)
        case Transient():
            return transient(exchange, answer)


def not_sent(exchange: Exchange, result: NotSent) -> Verdict:
    """The token cannot have reached the provider: retry."""
    steps = _unanswered(exchange, AttemptState.NOT_SENT, OutcomeClass.PROVIDER_UNAVAILABLE, result.reason)
    return Verdict(steps, Retry(f"provider {exchange.provider.name!r} unreachable ({result.reason})", None))


def _unanswered(exchange: Exchange, state: AttemptState, kind: OutcomeClass, reason: str) -> tuple[Step, ...]:
    """Close an attempt that got no answer, keeping the lease for a retry or a re-send."""
    record = report(kind, latency=exchange.latency, reason=reason)
    return exchange.finish(state, reason, record, release=False), exchange.line(f"{kind.value} ({reason})")


def ambiguous(exchange: Exchange, result: Ambiguous, *, give_up: bool) -> Verdict:
    """The token may have reached the provider: re-send it once (inside the deadline), else give up with the
    attempt left ambiguous for the next refresh to resolve."""
    grant, attempt = exchange.grant, exchange.attempt
    closed = _unanswered(exchange, AttemptState.AMBIGUOUS, OutcomeClass.AMBIGUOUS, result.reason)
    if give_up:
        error = ProviderUnavailable.no_answer(
            provider=exchange.provider.name,
            reason=result.reason,
            **exchange.evidence(),  # type: ignore[arg-type]
        )
        return Verdict((*closed, Release(exchange.lease)), Raise(error))
    note = Log(
        logging.WARNING,
        lines.resend_note(attempt, exchange.provider, exchange.now),
        {"grant": grant.name, "attempt_id": attempt.id, "fingerprint": grant.refresh_fp},
    )
    return Verdict((*closed, note), Resend())


def transient(exchange: Exchange, answer: Transient) -> Verdict:
    """A 5xx, 429 or 408, or a transient OAuth error: the token was not consumed; retry."""
    failure = f"provider {exchange.provider.name!r} answered HTTP {answer.status}" + (
        f" {answer.error}" if answer.error else ""
    )
    finish = exchange.finish(
        AttemptState.REJECTED,
        failure,
        report(
            OutcomeClass.PROVIDER_UNAVAILABLE,
            status=answer.status,
            latency=exchange.latency,
            oauth_error=answer.error,
            retry_after=answer.retry_after,
        ),
        release=False,
    )
    line = exchange.line("provider_unavailable" + (f" ({answer.error})" if answer.error else ""), status=answer.status)
    return Verdict((finish, line), Retry(failure, answer.retry_after))


def malformed(exchange: Exchange, answer: Malformed) -> Verdict:
    """Not a token response and no new refresh token in it: nothing to store. A 2xx we cannot read may still have
    rotated the token on the provider's side, so its attempt is ambiguous."""
    spent = AttemptState.AMBIGUOUS if 200 <= answer.status < 300 else AttemptState.REJECTED
    finish = exchange.finish(
        spent,
        f"malformed_response: {answer.reason}",
        report(OutcomeClass.MALFORMED_RESPONSE, status=answer.status, latency=exchange.latency, reason=answer.reason),
    )
    line = exchange.line(f"malformed_response ({answer.reason})", status=answer.status)
    error = MalformedResponse.unusable(
        provider=exchange.provider.name,
        status=answer.status,
        reason=answer.reason,
        ambiguous=spent is AttemptState.AMBIGUOUS,
        **exchange.evidence(),  # type: ignore[arg-type]
    )
    return Verdict((finish, line), Raise(error))


def kept_successor(exchange: Exchange, answer: Malformed, done: Refreshed) -> Verdict:
    """Not a token response, but its new refresh token was committed (`done`): say so, and what was wrong."""
    assert answer.successor is not None
    where = lines.committed(superseded=not done.issued, stored=done.committed)
    line = exchange.line(
        f"malformed_response ({answer.reason}); the new refresh token was {where}, the access token discarded",
        status=answer.status,
        after=done.grant,
    )
    error = MalformedResponse.kept_successor(
        provider=exchange.provider.name,
        grant=exchange.grant.name,
        status=answer.status,
        reason=answer.reason,
        generation=done.grant.generation,
        superseded=not done.issued,
        committed=done.committed,
        syntax_ok=refresh_token_ok(answer.successor.reveal()),
        attempt_id=exchange.attempt.id,
        fingerprint=done.grant.refresh_fp,
        worker=exchange.worker,
    )
    return Verdict((line,), Raise(error))


def invalid_grant(
    exchange: Exchange,
    answer: OAuthFailure,
    latest: Grant,
    *,
    recent_resend: Attempt | None,
    stale_send: Attempt | None,
) -> Verdict:
    """invalid_grant, judged against the store's `latest` state: a stale local token (send the latest once, unless
    this refresh already did), or a dead grant (revoked, lost in flight, reuse detected), which is marked so."""
    attempt = exchange.attempt
    resend, stale = _recent_reuse(recent_resend, stale_send)
    error = classify_invalid_grant(
        sent=exchange.grant,
        latest=latest,
        attempt=attempt,
        recent_resend=resend,
        worker=exchange.worker,
        rotates=exchange.provider.rotation is not RotationMode.NEVER,
        stale_send=stale,
    )
    record = report(
        OutcomeClass(error.code),
        error=error,
        oauth=answer,
        latency=exchange.latency,
        facts=_invalid_grant_facts(attempt, latest, resend, stale),
    )
    line = exchange.line(f"{error.code} (invalid_grant)", status=answer.status)
    if not isinstance(error, StaleLocalToken):
        return Verdict((line, exchange.finish(AttemptState.DEAD, error.code, record, mark_dead=True)), Raise(error))
    can_retry = stale_send is None and latest.state is GrantState.ACTIVE
    finish = exchange.finish(AttemptState.REJECTED, error.code, record, release=not can_retry)
    if not can_retry or latest.refresh_token is None:
        return Verdict((line, finish), Raise(error))
    return Verdict((line, finish, Log(logging.WARNING, str(error), error.evidence())), SendLatest(latest))


def refused(exchange: Exchange, answer: OAuthFailure) -> Verdict:
    """Any other OAuth error: client credentials, scope, request. The grant is not touched."""
    error = classify_other(answer, grant=exchange.grant, attempt=exchange.attempt, worker=exchange.worker)
    record = report(OutcomeClass(error.code), error=error, oauth=answer, latency=exchange.latency)
    line = exchange.line(f"{error.code} ({answer.error})", status=answer.status)
    finish = exchange.finish(AttemptState.REJECTED, f"{error.code}: {answer.error}", record)
    return Verdict((line, finish), Raise(error))


def gave_up(exchange: Exchange, retry: Retry, *, tries: int) -> Verdict:
    """Transient failures used up the tries or the time: the token was not consumed and the grant stays healthy."""
    error = ProviderUnavailable.gave_up(
        failure=retry.failure,
        tries=tries,
        retry_after=retry.retry_after,
        **exchange.evidence(),  # type: ignore[arg-type]
    )
    return Verdict((Release(exchange.lease),), Raise(error))


def _recent_reuse(recent: Attempt | None, stale_send: Attempt | None) -> tuple[Attempt | None, Attempt | None]:
    """Split the claim's latest re-send-or-stale-send into (re-send, stale send); this refresh's own stale send
    wins: it is the newest second use of a token."""
    if recent is not None and recent.outcome == OutcomeClass.STALE_LOCAL_TOKEN.value:
        return None, stale_send or recent
    return recent, stale_send


def _invalid_grant_facts(
    attempt: Attempt, latest: Grant, recent_resend: Attempt | None, stale_send: Attempt | None
) -> dict[str, object]:
    """What `doctor` needs beyond the error's own evidence: the state the rejection was judged against."""
    facts: dict[str, object] = {
        "current_generation": latest.generation,
        "current_fingerprint": latest.refresh_fp,
        "rejected_attempt": attempt.id,
    }
    if attempt.resend_of is not None:
        facts["spent_by_attempt"] = attempt.resend_of
    if stale_send is not None:
        facts["stale_attempt"] = stale_send.id
    if recent_resend is not None:
        facts["recent_resend"] = recent_resend.id
        if recent_resend.resend_of is not None:
            facts["recent_resend_of"] = recent_resend.resend_of
    return facts


# What to commit.


def success_update(exchange: Exchange, answer: Success) -> tuple[GrantUpdate, bool]:
    """What to commit from a token response, and whether its access token must not be served on trust.

    A re-send answered with a successor may be a grace replay, whose access token some servers
    (django-oauth-toolkit) repeat from the first answer, expired or not: the successor is committed without that
    access token, and a fresh one is got with the successor (one more request).
    """
    update = _update(exchange, answer)
    verify = exchange.attempt.resend_of is not None and update.refresh_token is not None
    if verify:
        update = dataclasses.replace(update, access_token=None, expires_at=None, access_verified=False)
    return update, verify


def _update(exchange: Exchange, answer: Success) -> GrantUpdate:
    """Expiry counts from when the request was sent; a missing refresh token keeps ours."""
    token_set, grant, sent_at = answer.token_set, exchange.grant, exchange.sent_at
    expires_in = token_set.expires_in if token_set.expires_in is not None else exchange.provider.default_expires_in
    new_refresh = token_set.refresh_token
    if new_refresh is not None and new_refresh == grant.refresh_token:
        new_refresh = None
    lifetime = token_set.refresh_token_expires_in
    return GrantUpdate(
        same_refresh_returned=token_set.refresh_token is not None and new_refresh is None,
        refresh_token=new_refresh,
        access_token=token_set.access_token,
        expires_at=sent_at + expires_in,
        scopes=token_set.scope,
        # A re-send answered with a successor never gets here with its access token (see success_update); one
        # answered without (a provider that did not rotate) is served, marked unverified so a 401 invalidates it.
        access_verified=exchange.attempt.resend_of is None,
        refresh_expires_at=sent_at + lifetime if lifetime is not None else None,
    )


def successor_only(exchange: Exchange, answer: Malformed) -> GrantUpdate | None:
    """What to commit from a malformed answer: its new refresh token alone (the access token is discarded), or
    None if it carries none, or only the token that was sent (nothing new to lose)."""
    if answer.successor is None or answer.successor == exchange.grant.refresh_token:
        return None
    lifetime = answer.successor_expires_in
    return GrantUpdate(
        refresh_token=answer.successor,
        access_token=None,
        expires_at=None,
        scopes=None,
        access_verified=False,
        refresh_expires_at=exchange.sent_at + lifetime if lifetime is not None else None,
    )
