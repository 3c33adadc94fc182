"""The refresh transaction as a sans-I/O generator (docs/design.md steps 3-8).

`refresh_flow` yields steps (`grantkeeper.protocol.steps`) and receives their results; store errors are
thrown into it. It decides everything: whether to wait, whether to send, whether a possibly-spent token may
be re-sent, how to classify an answer, what to commit. The sync and async drivers only execute steps, hold
the in-process lock, and release a lease the flow leaves behind.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any

from grantkeeper._exceptions import ConfigurationError, GrantkeeperError, LeaseTimeout, sanitize_provider_text
from grantkeeper.model import Attempt, Grant, GrantState, Lease, Provider
from grantkeeper.model.claims import Claim, GenerationConflict, GrantUpdate
from grantkeeper.model.exchange import HttpReply, RefreshRequest
from grantkeeper.protocol import lines, verdicts
from grantkeeper.protocol.answers import Malformed, OAuthFailure, Success, interpret
from grantkeeper.protocol.classify import dead_grant_error
from grantkeeper.protocol.policy import RefreshPolicy
from grantkeeper.protocol.steps import (
    ClaimGrant,
    Commit,
    Failpoint,
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
from grantkeeper.protocol.verdicts import Exchange, Refreshed, Verdict

__all__ = ["Refreshed", "refresh_flow"]

Flow = Generator[Step, Any, "Refreshed"]


def refresh_flow(
    name: str,
    *,
    worker: str,
    force: bool,
    policy: RefreshPolicy,
    seen_generation: int | None = None,
    actor: str = "",
) -> Flow:
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
                yield lines.decision(
                    claim.grant, "committed the successor kept in local recovery storage; nothing sent"
                )
            return Refreshed(claim.grant, claim.provider)
        if seen is None:
            seen = claim.grant.generation  # the holder's commit will satisfy this forced refresh
        if now >= deadline:
            holder = claim.holder
            raise LeaseTimeout.held(
                grant=name,
                generation=claim.grant.generation,
                worker=holder.worker,
                fence=holder.fence,
                waited=policy.wait_timeout,
                expires_at=holder.expires_at,
                now=now,
            )
        remaining = max(0.0, deadline - now)
        longest = min(remaining, max(0.0, claim.holder.expires_at - now))
        if claim.holder_signal:  # its death is not announced: look again soon, so a takeover is not late
            longest = min(longest, policy.liveness_recheck)
        yield WaitForChange(name, claim.grant.generation, min(poll, remaining), longest)
        poll = min(poll * 2, policy.poll_max)
        now = yield Now()
    yield Failpoint("after_claim")
    return (yield from _spend(claim, worker=worker, policy=policy, started=now, actor=actor))


def _spend(claim: Claim, *, worker: str, policy: RefreshPolicy, started: float, actor: str) -> Flow:
    """Inside the lease: send, judge the answer (`grantkeeper.protocol.verdicts`), do what the verdict says.
    Every exit closes the attempt it opened."""
    lease, attempt, provider = claim.lease, claim.attempt, claim.provider
    assert lease is not None
    assert attempt is not None
    policy = policy.for_provider(provider)  # the lease the claim took; requests and renewals fit inside it
    if claim.prior is not None or claim.took_over is not None:  # else nothing to note or decide before sending
        yield from _obey(verdicts.opening(claim, worker=worker, policy=policy, now=started))
    grant, stale_send, resent, tries = claim.grant, None, False, 0
    while True:
        tries += 1
        exchange = yield from _send(grant, provider, lease, attempt, worker=worker, policy=policy, started=started)
        result = exchange.result
        answer = interpret(result, exchange.now) if isinstance(result, HttpReply) else result
        if isinstance(answer, Success):
            return (yield from _succeed(exchange, answer, policy=policy, actor=actor))
        if isinstance(answer, Malformed) and (kept := verdicts.successor_only(exchange, answer)) is not None:
            done = yield from _commit(exchange, kept)
            verdict = verdicts.kept_successor(exchange, answer, done)
        elif isinstance(answer, OAuthFailure) and answer.error == "invalid_grant":
            latest, _ = yield Load(grant.name)
            verdict = verdicts.invalid_grant(
                exchange, answer, latest, recent_resend=claim.recent_resend, stale_send=stale_send
            )
        else:
            give_up = resent or exchange.now - started >= policy.deadline
            verdict = verdicts.judge(exchange, answer, give_up=give_up)
        then = yield from _obey(verdict)
        now, resend_of = exchange.now, attempt.resend_of
        if isinstance(then, verdicts.Retry):
            wait = policy.retry_wait(tries, then.retry_after, started=started, now=now)
            if wait is None:  # out of tries or time: raises
                yield from _obey(verdicts.gave_up(exchange, then, tries=tries))
            else:
                yield Sleep(wait)
                now = yield Now()
        elif isinstance(then, verdicts.Resend):
            resent, resend_of = True, attempt.id
        elif isinstance(then, verdicts.SendLatest):
            stale_send, grant, resend_of = attempt, then.grant, None
        attempt = yield Record(
            lease, grant.generation, str(grant.refresh_fp), resend_of, policy.lease_ttl, now, actor, tries + 1
        )


def _obey(verdict: Verdict) -> Generator[Step, Any, verdicts.Then]:
    """Take the verdict's steps in order, then raise its error or hand back what comes next."""
    for step in verdict.steps:
        _ = yield step  # not `yield from`: a tuple's iterator cannot take the store's reply
    if isinstance(verdict.then, verdicts.Raise):
        raise verdict.then.error
    return verdict.then


def _send(
    grant: Grant,
    provider: Provider,
    lease: Lease,
    attempt: Attempt,
    *,
    worker: str,
    policy: RefreshPolicy,
    started: float,
) -> Generator[Step, Any, Exchange]:
    """One exchange with the token endpoint under the lease, between the failpoints crash tests kill at."""
    if grant.refresh_token is None:
        yield from _obey(verdicts.no_refresh_token(grant, lease, attempt, now=started))
    assert grant.refresh_token is not None
    yield Failpoint("before_send")
    sent_at = yield Now()
    try:
        result = yield Send(RefreshRequest(provider, grant.refresh_token, grant.scopes), policy.request_timeout)
    except ConfigurationError as exc:  # no client credentials, or TLS verification failed: nothing was sent
        yield verdicts.unsendable(lease, attempt, exc, now=sent_at)
        raise
    yield Failpoint("after_send")
    now = yield Now()
    return Exchange(grant, provider, lease, attempt, worker, sent_at, now, result)


def _succeed(exchange: Exchange, answer: Success, *, policy: RefreshPolicy, actor: str) -> Flow:
    """Commit a token response; a re-send's successor is refreshed once more before its access token is served."""
    update, verify = verdicts.success_update(exchange, answer)
    done = yield from _commit(exchange, update)
    assert isinstance(exchange.result, HttpReply)
    where = lines.committed(superseded=not done.issued, stored=done.committed)
    yield exchange.line(where, after=done.grant, status=exchange.result.status)
    if not verify or not done.committed or not done.issued:
        return done
    yield lines.decision(
        done.grant,
        f"attempt {exchange.attempt.id} re-sent a possibly spent token and was answered with a successor: its "
        "access token is not served on trust (a grace replay may repeat an expired one); refreshing once more "
        "with the successor",
    )
    return (
        yield from refresh_flow(
            exchange.grant.name,
            worker=exchange.worker,
            force=True,
            policy=policy,
            seen_generation=done.grant.generation,
            actor=actor,
        )
    )


def _commit(exchange: Exchange, update: GrantUpdate) -> Flow:
    grant, provider, lease, attempt = exchange.grant, exchange.provider, exchange.lease, exchange.attempt
    yield Failpoint("before_commit")
    now = yield Now()
    try:
        committed = yield Commit(lease, attempt.id, grant, update, now, exchange.latency)
    except GenerationConflict as conflict:
        # Another worker committed this generation first (our lease had expired): its chain is current and ours
        # is the superseded one. Serve the store's state.
        return (yield from _superseded(grant, provider, lease, conflict))
    except Exception as failure:
        # Whatever refused the commit (an outage, a damaged or truncated store, a full disk, a closed store), the
        # provider has already rotated: the successor must outlive this failure (I1). If recovery storage cannot
        # be written either, SaveRecovery raises an error naming the successor's fingerprint.
        return (yield from _keep_for_recovery(exchange, update, failure, now=now))
    yield Failpoint("after_commit")
    return Refreshed(committed, provider, issued=True)


def _superseded(grant: Grant, provider: Provider, lease: Lease, conflict: GenerationConflict) -> Flow:
    yield Log(logging.WARNING, str(conflict), conflict.evidence())
    yield Release(lease)
    latest, _ = yield Load(grant.name)
    if latest.state is GrantState.NEEDS_REAUTH:
        raise dead_grant_error(latest) from conflict
    return Refreshed(latest, provider)


def _keep_for_recovery(exchange: Exchange, update: GrantUpdate, failure: Exception, *, now: float) -> Flow:
    grant = exchange.grant
    reason = (
        failure.message
        if isinstance(failure, GrantkeeperError)
        else sanitize_provider_text(f"{type(failure).__name__}: {failure}")
    )
    yield lines.store_refused(grant, reason, attempt_id=exchange.attempt.id, worker=exchange.worker)
    yield SaveRecovery(grant.name, grant.generation, exchange.attempt.id, update, now)
    yield Failpoint("after_recovery_save")
    pending = Grant(
        name=grant.name,
        provider=grant.provider,
        refresh_token=update.refresh_token or grant.refresh_token,
        refresh_fp=grant.refresh_fp,
        access_token=update.access_token,
        access_fp=None,
        expires_at=update.expires_at,
        scopes=update.scopes or grant.scopes,
        generation=grant.generation + 1,
        state=GrantState.ACTIVE,
        access_verified=update.access_verified,
        updated_at=now,
    )
    return Refreshed(pending, exchange.provider, committed=False, issued=True)
