"""The failure table as pure functions (`grantkeeper.protocol.verdicts`): for each kind of provider answer, the
steps that close the attempt, in order, and what the transaction does next. No store, no network."""

from __future__ import annotations

import dataclasses
import json

import pytest

from grantkeeper import (
    ClientAuthFailed,
    LeaseTimeout,
    LostInFlight,
    MalformedResponse,
    ProviderRejected,
    ProviderUnavailable,
    RevokedOrExpired,
    Secret,
    StaleLocalToken,
)
from grantkeeper.model import Attempt, AttemptState, Grant, GrantState, Lease, OutcomeClass, Provider
from grantkeeper.model.claims import Claim
from grantkeeper.model.exchange import Ambiguous, HttpReply, NotSent
from grantkeeper.protocol import verdicts
from grantkeeper.protocol.answers import Malformed, OAuthFailure, Transient, interpret
from grantkeeper.protocol.policy import RefreshPolicy
from grantkeeper.protocol.steps import Finish, Log, Release

TOKEN = "rt-" + "s" * 30


def _grant(generation: int = 3, fp: str = "fp_aaaaaaaaaaaaaaaa", token: str = TOKEN) -> Grant:
    return Grant(
        name="g",
        provider="p",
        refresh_token=Secret(token),
        refresh_fp=fp,
        access_token=None,
        access_fp=None,
        expires_at=None,
        scopes=(),
        generation=generation,
        state=GrantState.ACTIVE,
    )


def _exchange(result: object = None, *, resend_of: int | None = None) -> verdicts.Exchange:
    attempt = Attempt(
        id=7,
        grant="g",
        generation=3,
        refresh_fp="fp_aaaaaaaaaaaaaaaa",
        worker="w1",
        started_at=100.0,
        state=AttemptState.OPEN,
        resend_of=resend_of,
    )
    return verdicts.Exchange(
        grant=_grant(),
        provider=Provider(name="p", token_url="https://as.example/token", client_id="c"),
        lease=Lease(grant="g", worker="w1", fence=1, expires_at=130.0),
        attempt=attempt,
        worker="w1",
        sent_at=100.0,
        now=100.5,
        result=result if result is not None else HttpReply(200, {}, b""),
    )


def _finish(verdict: verdicts.Verdict) -> Finish:
    (finish,) = [s for s in verdict.steps if isinstance(s, Finish)]
    return finish


def _error(verdict: verdicts.Verdict) -> Exception:
    assert isinstance(verdict.then, verdicts.Raise)
    return verdict.then.error


def test_not_sent_is_retried_and_keeps_the_lease() -> None:
    verdict = verdicts.judge(_exchange(NotSent("connect refused")), NotSent("connect refused"), give_up=False)
    finish = _finish(verdict)
    assert (finish.state, finish.release, finish.outcome) == (AttemptState.NOT_SENT, False, "connect refused")
    assert finish.report is not None and finish.report.kind is OutcomeClass.PROVIDER_UNAVAILABLE
    assert verdict.then == verdicts.Retry("provider 'p' unreachable (connect refused)", None)


@pytest.mark.parametrize("give_up", [False, True])
def test_an_unanswered_send_is_resent_once_then_left_ambiguous(give_up: bool) -> None:
    answer = Ambiguous("read timeout")
    verdict = verdicts.judge(_exchange(answer), answer, give_up=give_up)
    finish = _finish(verdict)
    assert (finish.state, finish.release) == (AttemptState.AMBIGUOUS, False)
    if give_up:
        assert isinstance(verdict.steps[-1], Release)  # the lease goes; the next refresh resolves the attempt
        error = _error(verdict)
        assert isinstance(error, ProviderUnavailable)
        assert "attempt 7 is recorded as ambiguous" in str(error) and error.attempt_id == 7
    else:
        assert verdict.then == verdicts.Resend()
        assert not any(isinstance(s, Release) for s in verdict.steps)
        assert isinstance(verdict.steps[-1], Log) and "re-sending once" in verdict.steps[-1].message


def test_a_transient_answer_is_retried_after_the_providers_wait() -> None:
    answer = Transient(503, "temporarily_unavailable", 2.0)
    verdict = verdicts.judge(_exchange(), answer, give_up=False)
    finish = _finish(verdict)
    assert (finish.state, finish.release) == (AttemptState.REJECTED, False)
    assert verdict.then == verdicts.Retry("provider 'p' answered HTTP 503 temporarily_unavailable", 2.0)


@pytest.mark.parametrize(("status", "state"), [(200, AttemptState.AMBIGUOUS), (302, AttemptState.REJECTED)])
def test_a_malformed_answer_without_a_successor_stores_nothing(status: int, state: AttemptState) -> None:
    verdict = verdicts.judge(_exchange(), Malformed("body is not a JSON object", status), give_up=False)
    assert _finish(verdict).state is state  # a 2xx may have rotated the token: ambiguous
    error = _error(verdict)
    assert isinstance(error, MalformedResponse) and "Nothing was stored" in str(error)
    assert ("recorded as ambiguous" in str(error)) is (state is AttemptState.AMBIGUOUS)


def test_a_malformed_answer_with_a_successor_is_committed_first() -> None:
    body = json.dumps({"access_token": "bad token", "refresh_token": "rt-new-" + "n" * 20}).encode()
    exchange = _exchange()
    answer = interpret(HttpReply(200, {"content-type": "application/json"}, body), 100.5)
    assert isinstance(answer, Malformed)
    update = verdicts.successor_only(exchange, answer)
    assert update is not None and update.refresh_token == Secret("rt-new-" + "n" * 20)
    assert update.access_token is None and not update.access_verified  # the access token is never served
    done = verdicts.Refreshed(_grant(4, "fp_bbbbbbbbbbbbbbbb"), exchange.provider, committed=True, issued=True)
    verdict = verdicts.kept_successor(exchange, answer, done)
    assert not any(isinstance(s, Finish) for s in verdict.steps)  # the commit closed the attempt
    error = _error(verdict)
    assert isinstance(error, MalformedResponse) and "stored (generation 4)" in str(error)
    assert error.fingerprint == "fp_bbbbbbbbbbbbbbbb"


def test_invalid_grant_for_the_latest_token_marks_the_grant_dead() -> None:
    answer = OAuthFailure("invalid_grant", "", 400)
    verdict = verdicts.invalid_grant(_exchange(), answer, _grant(), recent_resend=None, stale_send=None)
    finish = _finish(verdict)
    assert (finish.state, finish.mark_dead, finish.release) == (AttemptState.DEAD, True, True)
    assert isinstance(_error(verdict), RevokedOrExpired)


def test_invalid_grant_for_a_stale_token_sends_the_latest_once() -> None:
    answer = OAuthFailure("invalid_grant", "", 400)
    latest = _grant(4, "fp_cccccccccccccccc", "rt-latest-" + "l" * 20)
    verdict = verdicts.invalid_grant(_exchange(), answer, latest, recent_resend=None, stale_send=None)
    finish = _finish(verdict)
    assert (finish.state, finish.mark_dead, finish.release) == (AttemptState.REJECTED, False, False)
    assert verdict.then == verdicts.SendLatest(latest)
    # The second stale token in one refresh is not retried: it is reported, and the lease released.
    again = verdicts.invalid_grant(_exchange(), answer, latest, recent_resend=None, stale_send=_exchange().attempt)
    assert _finish(again).release
    assert isinstance(_error(again), StaleLocalToken)


@pytest.mark.parametrize(("code", "kind"), [("invalid_client", ClientAuthFailed), ("invalid_scope", ProviderRejected)])
def test_other_oauth_errors_leave_the_grant_alone(code: str, kind: type[Exception]) -> None:
    verdict = verdicts.judge(_exchange(), OAuthFailure(code, "no", 400), give_up=False)
    finish = _finish(verdict)
    assert (finish.state, finish.mark_dead) == (AttemptState.REJECTED, False)
    assert isinstance(_error(verdict), kind)


def test_a_resent_token_answered_with_a_successor_is_not_served_on_trust() -> None:
    body = json.dumps({"access_token": "at-1", "token_type": "Bearer", "refresh_token": "rt-next-" + "x" * 20})
    answer = interpret(HttpReply(200, {"content-type": "application/json"}, body.encode()), 100.5)
    assert not isinstance(answer, Malformed | OAuthFailure | Transient)
    first, verify_first = verdicts.success_update(_exchange(), answer)
    resent, verify_resent = verdicts.success_update(_exchange(resend_of=5), answer)
    assert (verify_first, first.access_token is not None, first.expires_at) == (False, True, 100.0 + 3600)
    assert (verify_resent, resent.access_token, resent.access_verified) == (True, None, False)


def _opening(*, shared_recovery: bool, now: float) -> verdicts.Verdict:
    """A claim that re-sends the token attempt 5 (worker w0, at 100 s) may have spent, judged at `now` by w1."""
    prior = Attempt(id=5, grant="g", generation=3, refresh_fp="fp_aaaaaaaaaaaaaaaa", worker="w0", started_at=100.0,
                    state=AttemptState.OPEN)  # fmt: skip
    claim = Claim(
        grant=_grant(),
        provider=Provider(name="p", token_url="https://as.example/token", client_id="c", reuse_grace=10.0),
        lease=Lease(grant="g", worker="w1", fence=2, expires_at=now + 30.0),
        attempt=dataclasses.replace(prior, id=6, worker="w1", started_at=now, resend_of=5),
        prior=prior,
        shared_recovery=shared_recovery,
        spent_since=100.0,
    )
    return verdicts.opening(claim, worker="w1", policy=RefreshPolicy(adopt_after=60.0), now=now)


def test_another_hosts_possibly_spent_token_is_left_alone_until_adopt_after() -> None:
    verdict = _opening(shared_recovery=False, now=130.0)
    error = _error(verdict)
    assert isinstance(error, LeaseTimeout)
    assert (error.grant, error.generation, error.fingerprint) == ("g", 3, "fp_aaaaaaaaaaaaaaaa")
    assert (error.attempt_id, error.worker, error.retry_after) == (5, "w0", 30.0)
    assert "attempt 5 by worker w0" in error.message and "another 30 s" in error.message
    finish = _finish(verdict)
    assert (finish.attempt_id, finish.state, finish.outcome) == (
        6,
        AttemptState.NOT_SENT,
        "deferred: attempt 5 may still commit",
    )
    assert finish.report is not None and finish.report.kind is OutcomeClass.DEFERRED


def test_a_token_past_the_reuse_grace_is_not_resent_and_the_grant_is_lost() -> None:
    verdict = _opening(shared_recovery=True, now=200.0)
    error = _error(verdict)
    assert isinstance(error, LostInFlight)
    assert (error.grant, error.generation, error.fingerprint) == ("g", 3, "fp_aaaaaaaaaaaaaaaa")
    assert (error.attempt_id, error.worker) == (5, "w1")
    assert "attempt 5 by worker w0" in error.message and "100.0 s ago" in error.message
    finish = _finish(verdict)
    assert (finish.attempt_id, finish.state, finish.outcome, finish.mark_dead) == (
        6,
        AttemptState.DEAD,
        "lost_in_flight",
        True,
    )
    assert finish.report is not None and finish.report.evidence["spent_by_attempt"] == 5
