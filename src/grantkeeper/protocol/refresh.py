"""The refresh transaction as a sans-I/O generator (docs/design.md steps 3-8).

`refresh_flow` yields steps (`grantkeeper.protocol.steps`) and receives their results; store errors are
thrown into it. It decides everything: whether to wait, whether to send, whether a possibly-spent token may
be re-sent, how to classify an answer, what to commit. The sync and async drivers only execute steps, hold
the in-process lock, and release a lease the flow leaves behind.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from grantkeeper._exceptions import (
    ConfigurationError,
    GrantkeeperError,
    LeaseTimeout,
    LostInFlight,
    MalformedResponse,
    ProviderUnavailable,
    StaleLocalToken,
    sanitize_provider_text,
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
    TokenSet,
)
from grantkeeper.model.claims import Claim, GenerationConflict, GrantUpdate
from grantkeeper.model.exchange import Ambiguous, NotSent, RefreshRequest
from grantkeeper.protocol.answers import Malformed, OAuthFailure, Success, Transient, interpret, refresh_token_ok
from grantkeeper.protocol.classify import classify_invalid_grant, classify_other, dead_grant_error
from grantkeeper.protocol.policy import RefreshPolicy
from grantkeeper.protocol.steps import (
    ClaimGrant,
    Commit,
    Failpoint,
    Finish,
    Load,
    Log,
    Now,
    Record,
    Release,
    SaveRecovery,
    Send,
    Sleep,
    Step,
    WaitForChange,
)

__all__ = ["Refreshed", "refresh_flow"]

Flow = Generator[Step, Any, "Refreshed"]


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


def refresh_flow(
    name: str, *, worker: str, force: bool, policy: RefreshPolicy, seen_generation: int | None = None,
    actor: str = "",
) -> Flow:  # fmt: skip
    """Refresh grant `name` unless it no longer needs it.

    Without `force`, a grant whose access token is usable is returned as is. With `force`, the generation the
    caller last saw (`seen_generation`; None: whatever is current now) is refreshed, unless another worker
    already moved past it. A non-forced refresh first reads the grant (no write lock: usually another worker
    has refreshed it already); a forced one goes straight to the claim. Either way the claim re-reads the grant
    in the transaction that takes the lease. `actor` names the calling thread or task in the attempt history.
    """
    now = yield Now()
    if not force:
        # Most calls that reach here find another worker's fresh token: a plain read, no write lock.
        grant, provider = yield Load(name)
        if grant.state is GrantState.NEEDS_REAUTH:
            raise dead_grant_error(grant)
        if grant.access_usable(now, provider.skew):
            return Refreshed(grant, provider)
    deadline = now + policy.wait_timeout
    poll = policy.poll_initial
    seen = seen_generation
    while True:
        claim: Claim = yield ClaimGrant(name, worker, policy.lease_ttl_for, now, force, seen, actor)
        if claim.lease is not None:
            break
        if claim.grant.state is GrantState.NEEDS_REAUTH:
            raise dead_grant_error(claim.grant)
        if claim.holder is None:  # nothing to do: usable, refreshed by another worker, or recovered
            if claim.recovered:
                yield _decision(claim.grant, "committed the successor kept in local recovery storage; nothing sent")
            return Refreshed(claim.grant, claim.provider)
        if seen is None:
            seen = claim.grant.generation  # the holder's commit will satisfy this forced refresh
        if now >= deadline:
            holder = claim.holder
            raise LeaseTimeout(
                f"grant {name!r} is being refreshed by worker {holder.worker} (fence {holder.fence}) and no "
                f"result arrived within {policy.wait_timeout:.0f} s; its lease expires at {holder.expires_at:.0f} "
                "(epoch s). Retry later; if this repeats, that worker is stuck",
                grant=name, generation=claim.grant.generation, worker=holder.worker,
                retry_after=max(0.0, holder.expires_at - now),
            )  # fmt: skip
        remaining = max(0.0, deadline - now)
        longest = min(remaining, max(0.0, claim.holder.expires_at - now))
        if claim.holder_signal:  # its death is not announced: look again soon, so a takeover is not late
            longest = min(longest, policy.liveness_recheck)
        yield WaitForChange(name, claim.grant.generation, min(poll, remaining), longest)
        poll = min(poll * 2, policy.poll_max)
        now = yield Now()
    yield Failpoint("after_claim")
    return (yield from _spend(claim, worker=worker, policy=policy, started=now, actor=actor))


def _report(
    kind: OutcomeClass, *, error: GrantkeeperError | None = None, oauth: OAuthFailure | None = None,
    status: int | None = None, latency: float | None = None, facts: dict[str, object] | None = None,
    **evidence: object,
) -> AttemptReport:  # fmt: skip
    """The history's record of an attempt that did not commit: the class, the provider's answer, the facts."""
    facts = {**(error.evidence() if error is not None else {}), **(facts or {}), **evidence}
    return AttemptReport(
        kind, error_code=oauth.error if oauth else None, error_description=oauth.description if oauth else None,
        http_status=oauth.status if oauth else status, latency=latency, evidence=facts,
    )  # fmt: skip


def _spend(claim: Claim, *, worker: str, policy: RefreshPolicy, started: float, actor: str) -> Flow:
    """Inside the lease: send, classify, commit. Every exit closes the attempt it opened."""
    grant, provider, lease, attempt = claim.grant, claim.provider, claim.lease, claim.attempt
    assert lease is not None
    assert attempt is not None
    policy = policy.for_provider(provider)  # the lease the claim took; requests and renewals fit inside it
    prior = claim.prior
    if claim.took_over is not None:
        dead = claim.took_over
        yield Log(logging.WARNING, (
            f"grant {grant.name!r}: took over the lease of worker {dead.worker} (fence {dead.fence}), whose process "
            f"is gone (its liveness signal was released), {max(0.0, dead.expires_at - started):.1f} s before that "
            "lease would have expired"
        ), {"grant": grant.name, "worker": dead.worker, "fence": dead.fence, "lease_expires_at": dead.expires_at,
            "attempt_id": attempt.id})  # fmt: skip
    if prior is not None and _must_wait_to_adopt(claim, prior, worker=worker, policy=policy, now=started):
        wait = prior.started_at + policy.adopt_after - started
        yield Finish(
            lease,
            attempt.id,
            AttemptState.NOT_SENT,
            f"deferred: attempt {prior.id} may still commit",
            started,
            report=_report(OutcomeClass.DEFERRED, prior_attempt=prior.id, prior_worker=prior.worker),
        )
        yield _decision(grant, f"not re-sending the token attempt {prior.id} may have spent for another {wait:.0f} s "
                               f"(worker {prior.worker} may still commit its successor)")  # fmt: skip
        raise LeaseTimeout(
            f"grant {grant.name!r}: attempt {prior.id} by worker {prior.worker} may have spent refresh token "
            f"{grant.refresh_fp}, and that worker may still hold the successor in its local recovery storage (it "
            f"could be cut off from the database, not dead). Not re-sending for another {wait:.0f} s; retry then. "
            "If that worker is gone for good, the re-send after that is recorded and, if refused, reported as "
            "lost_in_flight",
            grant=grant.name, generation=grant.generation, attempt_id=prior.id, worker=prior.worker,
            fingerprint=grant.refresh_fp, retry_after=wait,
        )  # fmt: skip
    if prior is not None and policy.grace_over(provider, spent_since=claim.spent_since or prior.started_at,
                                               now=started):  # fmt: skip
        lost = _grace_passed(claim, prior, worker=worker, now=started)
        yield Finish(lease, attempt.id, AttemptState.DEAD, lost.code, started, mark_dead=True,
                     report=_report(OutcomeClass.LOST_IN_FLIGHT, error=lost, spent_by_attempt=prior.id,
                                    not_resent=True, spent_since=claim.spent_since))  # fmt: skip
        raise lost
    if prior is not None:
        yield Log(logging.WARNING, _resend_note(prior, provider, started), {
            "grant": grant.name, "generation": grant.generation, "fingerprint": grant.refresh_fp,
            "attempt_id": attempt.id, "resend_of": prior.id, "prior_worker": prior.worker,
        })  # fmt: skip
    tries = 0
    resent_ambiguous = False
    stale_send: Attempt | None = None
    while True:
        tries += 1
        if grant.refresh_token is None:
            yield Finish(lease, attempt.id, AttemptState.NOT_SENT, "no refresh token", started,
                         report=_report(OutcomeClass.CONFIGURATION))  # fmt: skip
            raise ConfigurationError(f"grant {grant.name!r} has no refresh token; re-import it")
        yield Failpoint("before_send")
        sent_at = yield Now()
        try:
            result = yield Send(RefreshRequest(provider, grant.refresh_token, grant.scopes), policy.request_timeout)
        except ConfigurationError as exc:  # no client credentials, or TLS verification failed: nothing was sent
            yield Finish(lease, attempt.id, AttemptState.NOT_SENT, exc.code, sent_at,
                         report=_report(OutcomeClass.CONFIGURATION))  # fmt: skip
            raise
        yield Failpoint("after_send")
        now = yield Now()
        latency = now - sent_at
        retry_after: float | None = None
        if isinstance(result, NotSent | Ambiguous):
            maybe_spent = isinstance(result, Ambiguous)
            state = AttemptState.AMBIGUOUS if maybe_spent else AttemptState.NOT_SENT
            kind = OutcomeClass.AMBIGUOUS if maybe_spent else OutcomeClass.PROVIDER_UNAVAILABLE
            yield Finish(lease, attempt.id, state, result.reason, now, release=False,
                         report=_report(kind, latency=latency, reason=result.reason))  # fmt: skip
            yield _attempt_line(grant, provider, attempt, f"{kind.value} ({result.reason})", latency)
            if maybe_spent:
                if resent_ambiguous or now - started >= policy.deadline:
                    yield Release(lease)
                    raise ProviderUnavailable(
                        f"grant {grant.name!r}: no answer from provider {provider.name!r} after sending refresh "
                        f"token {grant.refresh_fp} ({result.reason}); attempt {attempt.id} is recorded as "
                        "ambiguous and the next refresh re-sends it per the provider's reuse grace. Retry later",
                        grant=grant.name, generation=grant.generation, attempt_id=attempt.id,
                        fingerprint=grant.refresh_fp, worker=worker,
                    )  # fmt: skip
                resent_ambiguous = True
                yield Log(logging.WARNING, _resend_note(attempt, provider, now), {
                    "grant": grant.name, "attempt_id": attempt.id, "fingerprint": grant.refresh_fp,
                })  # fmt: skip
                attempt = yield Record(lease, grant.generation, str(grant.refresh_fp), attempt.id,
                                       policy.lease_ttl, now, actor, tries + 1)  # fmt: skip
                continue
            failure_text = f"provider {provider.name!r} unreachable ({result.reason})"
        else:
            answer = interpret(result, now)
            if isinstance(answer, Success):
                update = _update(answer.token_set, grant, provider, sent_at, attempt)
                # A re-send answered with a successor may be a grace replay, whose access token some servers
                # (django-oauth-toolkit) repeat from the first answer, expired or not: commit the successor,
                # discard that access token, and get a fresh one with the successor (one more request).
                verify = attempt.resend_of is not None and update.refresh_token is not None
                if verify:
                    update = dataclasses.replace(update, access_token=None, expires_at=None, access_verified=False)
                done = yield from _commit(grant, provider, lease, attempt, update, worker=worker, latency=latency)
                yield _attempt_line(grant, provider, attempt, _committed(done), latency, after=done.grant,
                                    status=result.status)  # fmt: skip
                if not verify or not done.committed or not done.issued:
                    return done
                yield _decision(done.grant, f"attempt {attempt.id} re-sent a possibly spent token and was answered "
                                            "with a successor: its access token is not served on trust (a grace "
                                            "replay may repeat an expired one); refreshing once more with the "
                                            "successor")  # fmt: skip
                return (yield from refresh_flow(grant.name, worker=worker, force=True, policy=policy,
                                                seen_generation=done.grant.generation, actor=actor))  # fmt: skip
            if isinstance(answer, Malformed):
                # A 2xx we cannot read may still have rotated the token on the provider's side.
                spent = AttemptState.AMBIGUOUS if 200 <= answer.status < 300 else AttemptState.REJECTED
                kept = _successor_only(answer, grant, sent_at)
                if kept is not None:
                    done = yield from _commit(grant, provider, lease, attempt, kept, worker=worker, latency=latency)
                    yield _attempt_line(grant, provider, attempt, f"malformed_response ({answer.reason}); the new "
                                        f"refresh token was {_committed(done)}, the access token discarded", latency,
                                        after=done.grant, status=answer.status)  # fmt: skip
                    raise _kept_successor_error(answer, grant, provider, done, attempt=attempt, worker=worker)
                yield Finish(lease, attempt.id, spent, f"malformed_response: {answer.reason}", now,
                             report=_report(OutcomeClass.MALFORMED_RESPONSE, status=answer.status, latency=latency,
                                            reason=answer.reason))  # fmt: skip
                yield _attempt_line(grant, provider, attempt, f"malformed_response ({answer.reason})", latency,
                                    status=answer.status)  # fmt: skip
                raise MalformedResponse(
                    f"provider {provider.name!r} answered the refresh of grant {grant.name!r} with HTTP "
                    f"{answer.status} that is not a usable token response: {answer.reason}. Nothing was stored"
                    + ("; the attempt is recorded as ambiguous and the next refresh re-sends per the provider's "
                       "reuse grace" if spent is AttemptState.AMBIGUOUS else "")
                    + ". Check the token URL and the provider's status",
                    grant=grant.name, generation=grant.generation, attempt_id=attempt.id,
                    fingerprint=grant.refresh_fp, worker=worker,
                )  # fmt: skip
            if isinstance(answer, OAuthFailure):
                if answer.error == "invalid_grant":
                    latest, _ = yield Load(grant.name)
                    resend, stale = _recent_reuse(claim.recent_resend, stale_send)
                    error = classify_invalid_grant(
                        sent=grant, latest=latest, attempt=attempt, recent_resend=resend, worker=worker,
                        rotates=provider.rotation is not RotationMode.NEVER, stale_send=stale,
                    )  # fmt: skip
                    report = _report(
                        OutcomeClass(error.code), error=error, oauth=answer, latency=latency,
                        facts=_invalid_grant_facts(attempt, latest, resend, stale),
                    )  # fmt: skip
                    yield _attempt_line(grant, provider, attempt, f"{error.code} (invalid_grant)", latency,
                                        status=answer.status)  # fmt: skip
                    if isinstance(error, StaleLocalToken):
                        can_retry = stale_send is None and latest.state is GrantState.ACTIVE
                        yield Finish(lease, attempt.id, AttemptState.REJECTED, error.code, now, release=not can_retry,
                                     report=report)  # fmt: skip
                        if not can_retry or latest.refresh_token is None:
                            raise error
                        yield Log(logging.WARNING, str(error), error.evidence())
                        stale_send = attempt
                        grant = latest
                        attempt = yield Record(lease, grant.generation, str(grant.refresh_fp), None,
                                               policy.lease_ttl, now, actor, tries + 1)  # fmt: skip
                        continue
                    yield Finish(lease, attempt.id, AttemptState.DEAD, error.code, now, mark_dead=True, report=report)
                    raise error
                error = classify_other(answer, grant=grant, attempt=attempt, worker=worker)
                report = _report(OutcomeClass(error.code), error=error, oauth=answer, latency=latency)
                yield _attempt_line(grant, provider, attempt, f"{error.code} ({answer.error})", latency,
                                    status=answer.status)  # fmt: skip
                yield Finish(lease, attempt.id, AttemptState.REJECTED, f"{error.code}: {answer.error}", now,
                             report=report)  # fmt: skip
                raise error
            assert isinstance(answer, Transient)
            retry_after = answer.retry_after
            failure_text = f"provider {provider.name!r} answered HTTP {answer.status}" + (
                f" {answer.error}" if answer.error else ""
            )
            yield Finish(lease, attempt.id, AttemptState.REJECTED, failure_text, now, release=False,
                         report=_report(OutcomeClass.PROVIDER_UNAVAILABLE, status=answer.status, latency=latency,
                                        oauth_error=answer.error, retry_after=answer.retry_after))  # fmt: skip
            yield _attempt_line(grant, provider, attempt, "provider_unavailable" + (
                f" ({answer.error})" if answer.error else ""), latency, status=answer.status)  # fmt: skip
        # Transient and not spent: retry with backoff while tries and time remain.
        wait = policy.backoff(tries, retry_after)
        if tries >= policy.max_tries or now + wait - started > policy.deadline or wait > policy.lease_ttl / 2:
            yield Release(lease)
            raise ProviderUnavailable(
                f"grant {grant.name!r}: {failure_text}; gave up after {tries} tries. The refresh token was not "
                "consumed and the grant stays healthy; retry later",
                retry_after=retry_after, grant=grant.name, generation=grant.generation, attempt_id=attempt.id,
                fingerprint=grant.refresh_fp, worker=worker,
            )  # fmt: skip
        yield Sleep(wait)
        now = yield Now()
        attempt = yield Record(lease, grant.generation, str(grant.refresh_fp), attempt.resend_of,
                               policy.lease_ttl, now, actor, tries + 1)  # fmt: skip


def _update(token_set: TokenSet, grant: Grant, provider: Provider, sent_at: float, attempt: Attempt) -> GrantUpdate:
    """What to commit. Expiry counts from when the request was sent; a missing refresh token keeps ours."""
    expires_in = token_set.expires_in if token_set.expires_in is not None else provider.default_expires_in
    new_refresh = token_set.refresh_token
    if new_refresh is not None and new_refresh == grant.refresh_token:
        new_refresh = None
    return GrantUpdate(
        same_refresh_returned=token_set.refresh_token is not None and new_refresh is None,
        refresh_token=new_refresh,
        access_token=token_set.access_token,
        expires_at=sent_at + expires_in,
        scopes=token_set.scope,
        # A re-send answered with a successor never gets here with its access token (see _spend); one answered
        # without (a provider that did not rotate) is served, marked unverified so a 401 invalidates it (I4).
        access_verified=attempt.resend_of is None,
        refresh_expires_at=(
            sent_at + token_set.refresh_token_expires_in if token_set.refresh_token_expires_in is not None else None
        ),
    )


def _successor_only(answer: Malformed, grant: Grant, sent_at: float) -> GrantUpdate | None:
    """What to commit from a malformed answer: its new refresh token alone (the access token is discarded), or
    None if it carries none, or only the token that was sent (nothing new to lose)."""
    if answer.successor is None or answer.successor == grant.refresh_token:
        return None
    lifetime = answer.successor_expires_in
    return GrantUpdate(
        refresh_token=answer.successor, access_token=None, expires_at=None, scopes=None, access_verified=False,
        refresh_expires_at=sent_at + lifetime if lifetime is not None else None,
    )  # fmt: skip


def _kept_successor_error(
    answer: Malformed, grant: Grant, provider: Provider, done: Refreshed, *, attempt: Attempt, worker: str
) -> MalformedResponse:
    if not done.issued:
        where = f"not stored: another worker committed first, and its generation {done.grant.generation} is current"
    elif done.committed:
        where = f"stored (generation {done.grant.generation})"
    else:
        where = "kept in local recovery storage and is committed when the store is writable again"
    assert answer.successor is not None
    odd = "" if refresh_token_ok(answer.successor.reveal()) else (
        " It is outside RFC 6749 token syntax, so the provider may refuse it: if the next refresh fails with "
        "invalid_grant, re-authorize the grant."
    )  # fmt: skip
    return MalformedResponse(
        f"provider {provider.name!r} answered the refresh of grant {grant.name!r} with HTTP {answer.status} that is "
        f"not a usable token response: {answer.reason}. The answer did carry a new refresh token, which was {where}, "
        "because the provider has already rotated; the access token from that answer was discarded, never served, "
        f"and the next refresh uses the new refresh token.{odd} If this repeats, check what sits between grantkeeper "
        "and the token endpoint (a proxy rewriting answers) and the provider's status",
        grant=grant.name, generation=done.grant.generation, attempt_id=attempt.id, fingerprint=done.grant.refresh_fp,
        worker=worker,
    )  # fmt: skip


def _committed(done: Refreshed) -> str:
    if not done.issued:
        return "superseded (another worker committed this generation first)"
    return "committed" if done.committed else "kept in local recovery storage (the store refused the commit)"


def _attempt_line(
    grant: Grant, provider: Provider, attempt: Attempt, outcome: str, latency: float, *, after: Grant | None = None,
    status: int | None = None,
) -> Log:  # fmt: skip
    """The one INFO line per refresh attempt (`-v`): grant, provider, generations, fingerprints, latency, outcome."""
    moved = after is not None and after.generation != grant.generation
    generation = f"generation {grant.generation} -> {after.generation}" if moved and after else (
        f"generation {grant.generation} unchanged")  # fmt: skip
    refresh = f"refresh token {grant.refresh_fp}"
    if after is not None and after.refresh_fp != grant.refresh_fp:
        refresh += f" -> {after.refresh_fp}"
    access = f", access token {after.access_fp}" if after is not None and after.access_fp else ""
    http = f" (HTTP {status})" if status is not None else ""
    evidence: dict[str, object] = {
        "grant": grant.name, "provider": provider.name, "attempt_id": attempt.id, "generation": grant.generation,
        "fingerprint": grant.refresh_fp, "latency": round(latency, 6), "outcome": outcome,
    }  # fmt: skip
    if after is not None:
        evidence.update(new_generation=after.generation, new_fingerprint=after.refresh_fp, access_fp=after.access_fp)
    return Log(logging.INFO, (
        f"grant {grant.name!r} (provider {provider.name!r}): refresh attempt {attempt.id}{http} in {latency:.3f} s: "
        f"{outcome}; {generation}, {refresh}{access}"
    ), evidence)  # fmt: skip


def _decision(grant: Grant, what: str) -> Log:
    """The one INFO line per recovery decision (`-v`)."""
    return Log(logging.INFO, f"grant {grant.name!r} (generation {grant.generation}): {what}",
               {"grant": grant.name, "generation": grant.generation, "fingerprint": grant.refresh_fp})  # fmt: skip


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
    facts: dict[str, object] = {"current_generation": latest.generation, "current_fingerprint": latest.refresh_fp,
                                "rejected_attempt": attempt.id}  # fmt: skip
    if attempt.resend_of is not None:
        facts["spent_by_attempt"] = attempt.resend_of
    if stale_send is not None:
        facts["stale_attempt"] = stale_send.id
    if recent_resend is not None:
        facts["recent_resend"] = recent_resend.id
        if recent_resend.resend_of is not None:
            facts["recent_resend_of"] = recent_resend.resend_of
    return facts


def _commit(
    grant: Grant, provider: Provider, lease: Lease, attempt: Attempt, update: GrantUpdate, *, worker: str,
    latency: float,
) -> Flow:  # fmt: skip
    yield Failpoint("before_commit")
    now = yield Now()
    try:
        committed = yield Commit(lease, attempt.id, grant, update, now, latency)
    except GenerationConflict as conflict:
        # Another worker committed this generation first (our lease had expired): its chain is current and ours
        # is the superseded one. Serve the store's state.
        yield Log(logging.WARNING, str(conflict), conflict.evidence())
        yield Release(lease)
        latest, _ = yield Load(grant.name)
        if latest.state is GrantState.NEEDS_REAUTH:
            raise dead_grant_error(latest) from conflict
        return Refreshed(latest, provider)
    except Exception as failure:
        # Whatever refused the commit (an outage, a damaged or truncated store, a full disk, a closed store), the
        # provider has already rotated: the successor must outlive this failure (I1). If recovery storage cannot
        # be written either, SaveRecovery raises an error naming the successor's fingerprint.
        reason = (
            failure.message
            if isinstance(failure, GrantkeeperError)
            else sanitize_provider_text(f"{type(failure).__name__}: {failure}")
        )
        yield Log(logging.WARNING, (
            f"grant {grant.name!r}: the store could not be written ({reason}); keeping the new token set in local "
            "recovery storage until it can be committed"
        ), {"grant": grant.name, "generation": grant.generation + 1, "attempt_id": attempt.id,
            "worker": worker})  # fmt: skip
        yield SaveRecovery(grant.name, grant.generation, attempt.id, update, now)
        yield Failpoint("after_recovery_save")
        pending = Grant(
            name=grant.name, provider=grant.provider, refresh_token=update.refresh_token or grant.refresh_token,
            refresh_fp=grant.refresh_fp, access_token=update.access_token, access_fp=None,
            expires_at=update.expires_at, scopes=update.scopes or grant.scopes, generation=grant.generation + 1,
            state=GrantState.ACTIVE, access_verified=update.access_verified, updated_at=now,
        )  # fmt: skip
        return Refreshed(pending, provider, committed=False, issued=True)
    yield Failpoint("after_commit")
    return Refreshed(committed, provider, issued=True)


def _must_wait_to_adopt(claim: Claim, prior: Attempt, *, worker: str, policy: RefreshPolicy, now: float) -> bool:
    """Re-sending another host's possibly spent token is risky (rotating provider, grace over) and that host
    may still commit the successor it keeps locally: wait `adopt_after` from its attempt first."""
    if claim.shared_recovery or prior.worker == worker or claim.provider.rotation is RotationMode.NEVER:
        return False
    age = now - prior.started_at
    return age >= claim.provider.reuse_grace and age < policy.adopt_after


def _grace_passed(claim: Claim, prior: Attempt, *, worker: str, now: float) -> LostInFlight:
    """No re-send: the token's first possible use is older than the provider's reuse grace, so a re-send would be
    refused and, if the token was spent, taken as reuse (the provider revokes the grant)."""
    grant, provider = claim.grant, claim.provider
    since = claim.spent_since or prior.started_at
    return LostInFlight(
        f"grant {grant.name!r}: attempt {prior.id} by worker {prior.worker} may have spent refresh token "
        f"{grant.refresh_fp} and its replacement was never stored; that was {now - since:.1f} s ago, past the "
        f"provider's {provider.reuse_grace:.0f} s reuse grace, so a re-send would be refused and could make the "
        "provider revoke the grant. Not re-sent: the grant is lost. Re-authorize and re-import it; check that "
        "worker's logs around the attempt",
        grant=grant.name, generation=grant.generation, attempt_id=prior.id, worker=worker,
        fingerprint=grant.refresh_fp,
    )  # fmt: skip


def _resend_note(prior: Attempt, provider: Provider, now: float) -> str:
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
