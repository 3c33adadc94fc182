"""A hostile token endpoint (tests/hostile.py) against every way of asking for a token: the CLI, `Keeper`,
`AsyncKeeper` and `GrantAuth`. Each test checks the stored state before and after, what the simulator behind
the endpoint saw, and scans every output for every token (and any 8-character fragment of one).

Issue 17: a malformed answer keeps its successor refresh token (item 13); token values outside RFC 6749/6750
syntax are never served nor put into a header (item 14); a token living less than the skew is served once
and never loops the provider (item 16); a re-send's answer is not served on trust (item 12); -v says what
each refresh attempt did (item 8).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from grantkeeper import GrantState, Keeper, MalformedResponse, Secret
from grantkeeper import _failpoints as failpoints
from grantkeeper.model.tokens import access_token_ok, refresh_token_ok
from grantkeeper.protocol.answers import HttpReply, Malformed, Success, interpret
from grantkeeper.stores import SQLiteStore
from grantkeeper.testing import DropAfterRotate, FakeClock
from tests.helpers import FAST_POLICY, resource_ok, store_locked_at
from tests.hostile import HostileFactory, HostileWorld, Reply, Rewrite, hostile, make_hostile

__all__ = ["hostile", "make_hostile"]  # fixtures

DRIVERS = ["cli", "keeper", "async", "grantauth"]
Json = dict[str, Any]


def _with(**changes: object) -> Any:
    return lambda body: {**body, **changes}


def _without(key: str) -> Any:
    return lambda body: {k: v for k, v in body.items() if k != key}


def _access_plus(suffix: str) -> Any:
    return lambda body: {**body, "access_token": body["access_token"] + suffix}


#: Answers a broken proxy or provider gives after the provider really rotated: each carries the real successor.
MALFORMED_WITH_SUCCESSOR = {
    "expires_in -1 (the proxy of issue 17)": _with(expires_in=-1),
    "expires_in a word": _with(expires_in="soon"),
    "expires_in NaN-like": _with(expires_in="nan"),
    "token_type mac": _with(token_type="mac"),
    "no access_token": _without("access_token"),
    "access_token a number": _with(access_token=12345),
    "scope a number": _with(scope=7),
    "access_token with CR LF (header injection)": _access_plus("\r\nX-Injected: yes"),
    "access_token with NUL": _access_plus("\x00tail"),
    "access_token with ESC (clears a terminal)": _access_plus("\x1b[2J\x1b[H"),
    "access_token with DEL": _access_plus("\x7f"),
    "access_token with a space": _access_plus(" second-word"),
    "access_token with non-ASCII": _access_plus("é"),
}


def _state(world: HostileWorld) -> tuple[int, str | None, str | None, GrantState]:
    grant = world.grant()
    return grant.generation, grant.refresh_fp, grant.access_fp, grant.state


def _current_refresh(world: HostileWorld) -> str:
    token = world.grant().refresh_token
    assert token is not None
    return token.reveal()


# -- item 13 and 14: a malformed answer keeps its successor; unsafe access tokens are never served ---------------


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("edit", list(MALFORMED_WITH_SUCCESSOR))
def test_a_malformed_answer_keeps_its_successor(hostile: HostileWorld, driver: str, edit: str) -> None:
    """The provider rotated, the answer is unusable: the successor is committed (generation +1), the access token
    is discarded (nothing served, no header sent), the error says so (exit 9), and the next call refreshes with
    the successor (the old token is never re-sent, so reuse detection never fires)."""
    sent = hostile.add_grant()
    generation, refresh_fp, _, _ = _state(hostile)
    hostile.endpoint.script(Rewrite(MALFORMED_WITH_SUCCESSOR[edit]))

    failed = hostile.ask(driver)
    assert (failed.token, failed.exit_code) == (None, 9)
    if driver != "cli":
        assert isinstance(failed.error, MalformedResponse)
        assert "new refresh token" in str(failed.error) and "discarded" in str(failed.error)
    after = hostile.grant()
    assert (after.generation, after.state, after.access_token) == (generation + 1, GrantState.ACTIVE, None)
    assert after.refresh_fp != refresh_fp and hostile.sim.is_active(_current_refresh(hostile))
    assert not any("x-injected" in s.headers for s in hostile.endpoint.seen)

    served = hostile.ask(driver)
    assert served.exit_code == 0 and served.token is not None and access_token_ok(served.token)
    assert resource_ok(hostile.sim, served.token) and served.resource_status in (None, 200)
    assert [s.refresh_token for s in hostile.endpoint.token_requests()] == [sent, after.refresh_token.reveal()]  # type: ignore[union-attr]
    assert hostile.sim.stats.reuse_detections == 0  # type: ignore[attr-defined]
    assert hostile.grant().generation == generation + 2
    hostile.scan()


def test_the_error_says_what_was_wrong_and_what_was_kept(hostile: HostileWorld) -> None:
    """The message names the defect and the commit, never a token; -v logs the attempt with both generations."""
    hostile.add_grant()
    hostile.endpoint.script(Rewrite(_with(expires_in=-1)))
    assert hostile.cli("token", "g").exit_code == 9
    assert "expires_in is not a non-negative number" in hostile.stderr
    assert "new refresh token, which was stored (generation 2)" in hostile.stderr
    assert "Nothing was stored" not in hostile.stderr
    assert "generation 1 -> 2" in hostile.stderr and "malformed_response" in hostile.stderr
    hostile.scan()


@pytest.mark.parametrize("driver", ["cli", "keeper"])
def test_a_successor_outside_rfc6749_syntax_is_kept_and_reported(hostile: HostileWorld, driver: str) -> None:
    """A refresh token with a CR LF appended is still stored exactly (it only travels form-encoded, and the
    provider has already spent the old one); the answer counts as malformed, so its access token is discarded,
    and the error says the kept token is outside RFC 6749 syntax."""
    hostile.add_grant()
    hostile.endpoint.script(Rewrite(lambda body: {**body, "refresh_token": body["refresh_token"] + "\r\n"}))
    failed = hostile.ask(driver)
    assert failed.exit_code == 9 and failed.token is None
    grant = hostile.grant()
    assert grant.generation == 2 and grant.access_token is None
    assert grant.refresh_token is not None and grant.refresh_token.reveal().endswith("\r\n")
    text = hostile.stderr if driver == "cli" else str(failed.error)
    assert "outside RFC 6749" in text
    hostile.scan()


@pytest.mark.parametrize("driver", DRIVERS)
def test_an_unsafe_access_token_already_in_the_store_is_never_served(hostile: HostileWorld, driver: str) -> None:
    """A store written before tokens were checked holds an access token with a header injection in it, valid for
    an hour: it is treated as absent, so the grant is refreshed once and the new token served; no request ever
    carried the injected header."""
    hostile.add_grant(access_token="stored-before-checks-abcdef\r\nX-Injected: yes")
    served = hostile.ask(driver)
    assert served.exit_code == 0 and served.token is not None and resource_ok(hostile.sim, served.token)
    assert hostile.grant().generation == 2 and len(hostile.endpoint.token_requests()) == 1
    assert not any("x-injected" in s.headers for s in hostile.endpoint.seen)
    hostile.scan()


def test_the_bridges_refuse_an_unsafe_token_without_quoting_it(hostile: HostileWorld) -> None:
    """If an unsafe token reached a bridge anyway, it raises MalformedResponse without the token and sends
    nothing (the check before every header)."""
    from grantkeeper.integrations._flow import checked_token, scrubbing

    secret = Secret("planted-token-abcdefghij\r\nX-Injected: yes")  # a Secret: the frame's locals show no value
    hostile.planted.add(secret.reveal())
    with pytest.raises(MalformedResponse) as info:
        checked_token("g", secret.reveal())
    hostile.capture_exception("checked_token", info.value)
    # A foreign library's error that quotes a live token leaves a bridge scrubbed, with its type kept.
    with pytest.raises(ValueError, match="redacted") as foreign, scrubbing():
        raise ValueError(f"Invalid header value b'Bearer {secret.reveal()}'")
    hostile.capture_exception("scrubbed foreign error", foreign.value)
    hostile.scan()


# -- item 16: a token that lives less than the skew ------------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("lifetime", [0, 0.0001, 5])
def test_a_token_shorter_than_the_skew_is_served_once(hostile: HostileWorld, driver: str, lifetime: float) -> None:
    """``expires_in`` 0, 0.0001 or 5 s (skew 30 s): each call gets the token its own refresh obtained, one
    provider call per call, never three rotations and 'retry later'."""
    hostile.add_grant()
    for call in range(1, 3):
        hostile.endpoint.script(Rewrite(_with(expires_in=lifetime)))
        served = hostile.ask(driver)
        assert served.exit_code == 0 and served.token is not None, served.error
        assert resource_ok(hostile.sim, served.token)
        calls = len(hostile.endpoint.token_requests())
        # A 5 s token is cached for half its life (2.5 s); within that, the second call may reuse it.
        assert calls == call or (lifetime == 5 and calls == 1)
    assert hostile.grant().generation == len(hostile.endpoint.token_requests()) + 1
    assert hostile.sim.stats.reuse_detections == 0  # type: ignore[attr-defined]
    hostile.scan()


# -- item 12: a re-send's answer is not served on trust ------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_grace_replay_of_an_expired_access_token_is_never_served(make_hostile: HostileFactory,
                                                                    driver: str) -> None:  # fmt: skip
    """The connection drops after the provider rotated; the re-send inside its grace is answered with the first
    answer's access token (expired by then) and a fresh expires_in, as django-oauth-toolkit does. The successor
    is committed, that access token is never served, and one more refresh with the successor gets a live one."""
    sim_clock = FakeClock()
    world = make_hostile(reuse_grace=30, access_ttl=2, grace_returns_previous_access=True, clock=sim_clock.monotonic)
    world.add_grant(reuse_grace=30)
    world.sim.inject(DropAfterRotate())  # type: ignore[attr-defined]

    def expire_the_dropped_answers_token() -> None:
        failpoints.clear_hooks()
        sim_clock.advance(5)

    failpoints.set_hook("after_send", expire_the_dropped_answers_token)
    served = world.ask(driver)
    assert served.exit_code == 0 and served.token is not None, served.error
    assert resource_ok(world.sim, served.token) and served.resource_status in (None, 200)
    assert world.sim.stats.grace_replays == 1 and len(world.endpoint.token_requests()) == 3  # type: ignore[attr-defined]
    grant = world.grant()
    assert grant.generation == 3 and grant.access_verified and world.sim.is_active(_current_refresh(world))
    world.scan()


def test_the_recovery_decision_is_logged(make_hostile: HostileFactory) -> None:
    """-v: one line per attempt (the dropped one, the re-send, the extra refresh) and one for the decision."""
    world = make_hostile(reuse_grace=30)
    world.add_grant(reuse_grace=30)
    world.sim.inject(DropAfterRotate())  # type: ignore[attr-defined]
    assert world.cli("token", "g").exit_code == 0
    lines = world.stderr.splitlines()
    attempts = [line for line in lines if "refresh attempt" in line and " INFO " in line]
    assert len(attempts) == 3, world.stderr
    assert "ambiguous" in attempts[0] and "generation 1 unchanged" in attempts[0]
    assert "committed; generation 1 -> 2" in attempts[1] and "generation 2 -> 3" in attempts[2]
    assert any("not served on trust" in line and " INFO " in line for line in lines)
    world.scan()


# -- item 8: -v says what a successful refresh did ---------------------------------------------------------


def test_verbose_logs_one_line_per_successful_refresh(hostile: HostileWorld) -> None:
    """grant, provider, generation before/after, fingerprints, latency and outcome, and no token."""
    hostile.add_grant()
    before = hostile.grant()
    assert hostile.cli("token", "g").exit_code == 0
    after = hostile.grant()
    lines = [line for line in hostile.stderr.splitlines() if "refresh attempt" in line]
    assert len(lines) == 1, hostile.stderr
    line = lines[0]
    assert " INFO " in line and "grant 'g' (provider 'hostile')" in line and "committed" in line
    assert f"generation 1 -> 2, refresh token {before.refresh_fp} -> {after.refresh_fp}" in line
    assert f"access token {after.access_fp}" in line and " s: " in line
    hostile.scan()


# -- more hostile answers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("driver", ["cli", "keeper"])
def test_an_html_200_after_rotation_is_ambiguous_then_recovered_in_the_grace(make_hostile: HostileFactory,
                                                                             driver: str) -> None:  # fmt: skip
    """An answer with no readable successor (an HTML page) after the provider rotated: exit 9, nothing stored,
    the attempt is ambiguous; the next call re-sends inside the grace, commits the successor and refreshes once
    more for a live access token."""
    world = make_hostile(reuse_grace=30)
    world.add_grant(reuse_grace=30)
    world.endpoint.script(Rewrite(lambda _body: Reply(200, b"<html>maintenance</html>", "text/html")))
    first = world.ask(driver)
    assert first.exit_code == 9 and world.grant().generation == 1
    assert world.sim.stats.rotations == 1  # type: ignore[attr-defined]
    served = world.ask(driver)
    assert served.exit_code == 0 and served.token is not None and resource_ok(world.sim, served.token)
    assert world.sim.stats.grace_replays == 1 and world.grant().generation == 3  # type: ignore[attr-defined]
    world.scan()


@pytest.mark.parametrize(
    "body",
    [b"x" * 300_000, b'{"access_token": "\\ud800", "refresh_token": "\\ud800"}', b"[" * 100_000,
     json.dumps({"access_token": "a" * 20_000, "token_type": "Bearer"}).encode()],
    ids=["oversized", "lone surrogates", "deep nesting", "20k access token"],
)  # fmt: skip
def test_bodies_that_carry_nothing_usable_store_nothing(hostile: HostileWorld, body: bytes) -> None:
    """No usable successor in the answer: a typed error, state unchanged, nothing served."""
    hostile.add_grant()
    before = _state(hostile)
    hostile.endpoint.script(Reply(200, body))
    failed = hostile.ask("keeper")
    assert isinstance(failed.error, MalformedResponse) and "Nothing was stored" in str(failed.error)
    assert _state(hostile) == before
    hostile.scan()


# -- the syntax rules, directly --------------------------------------------------------------------------------


def _reply(payload: Json) -> HttpReply:
    return HttpReply(200, {"content-type": "application/json"}, json.dumps(payload).encode())


@pytest.mark.parametrize(
    "token",
    ["eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjE3MDB9.c2ln", "00D5g000004XyZ!AQ0AQK9x.Gh_8rM3Pu", "ya29.a0AfB_byC-1~x/y+z==",
     "A" * 4096, "tok,en;with:odd\"chars'and\\more"],
    ids=["JWT", "Salesforce", "Google/b64token", "4 KiB", "other VSCHAR"],
)  # fmt: skip
def test_real_access_token_formats_are_accepted(token: str) -> None:
    assert isinstance(interpret(_reply({"access_token": token, "token_type": "Bearer"}), 0.0), Success)


@pytest.mark.parametrize("bad", ["a\r\nb", "a\nb", "a\x00b", "a\x1b[2Jb", "a\x7fb", "a b", "é", "a\tb", "\x85x"])
def test_unsafe_access_tokens_are_malformed_and_keep_the_successor(bad: str) -> None:
    answer = interpret(_reply({"access_token": bad, "token_type": "Bearer", "refresh_token": "next-rt"}), 0.0)
    assert isinstance(answer, Malformed) and answer.successor == Secret("next-rt")
    assert bad not in answer.reason and "RFC 6750" in answer.reason


def test_refresh_token_syntax_is_rfc6749_vschar_with_the_space() -> None:
    """A space is allowed in a refresh token (RFC 6749 A.17, and it only travels form-encoded); control
    characters and non-ASCII are not, but such a token is still kept as the successor of a malformed answer."""
    assert refresh_token_ok("a b") and not access_token_ok("a b")
    assert isinstance(interpret(_reply({"access_token": "at", "refresh_token": "r t"}), 0.0), Success)
    answer = interpret(_reply({"access_token": "at", "refresh_token": "rt\x00"}), 0.0)
    assert isinstance(answer, Malformed) and answer.successor == Secret("rt\x00")
    for unkeepable in ["   ", "\ud800", "r" * 20_000]:
        answer = interpret(_reply({"access_token": "at", "refresh_token": unkeepable}), 0.0)
        assert isinstance(answer, Malformed) and answer.successor is None


def test_a_non_200_success_status_keeps_the_successor() -> None:
    reply = HttpReply(201, {"content-type": "application/json"}, b'{"access_token": "at", "refresh_token": "rt2"}')
    answer = interpret(reply, 0.0)
    assert isinstance(answer, Malformed) and answer.successor == Secret("rt2")


def test_the_same_refresh_token_back_in_a_malformed_answer_commits_nothing(hostile: HostileWorld) -> None:
    """A non-rotating answer (the same refresh token echoed) that is malformed: nothing new to keep, so nothing is
    committed and the stored access token stays."""
    sent = hostile.add_grant()
    hostile.endpoint.script(Reply.json({"access_token": "x", "expires_in": -1, "refresh_token": sent}))
    before = _state(hostile)
    failed = hostile.ask("keeper")
    assert isinstance(failed.error, MalformedResponse) and _state(hostile) == before
    hostile.scan()


def test_a_kept_successor_survives_a_store_that_refuses_the_commit(hostile: HostileWorld) -> None:
    """I1 on the malformed path: the store is locked at commit, so the successor goes to local recovery storage
    (encrypted, no access token in it), the error says so, and the next keeper commits it and refreshes with it."""
    hostile.add_grant()
    db = Path(hostile.url.removeprefix("sqlite://"))
    hostile.endpoint.script(Rewrite(_with(expires_in=-1)))
    with store_locked_at(db), Keeper(SQLiteStore.open(db, busy_timeout=0.2), policy=FAST_POLICY) as keeper:
        with pytest.raises(MalformedResponse, match="kept in local recovery storage") as info:
            keeper.access_token("g")
        hostile.capture_exception("locked store", info.value)
        assert list(db.parent.rglob("*.gkr"))
    grant = hostile.grant()  # the store is writable again: the successor was committed from recovery storage
    assert (grant.generation, grant.access_token) == (2, None) and hostile.sim.is_active(_current_refresh(hostile))
    assert not list(db.parent.rglob("*.gkr"))
    served = hostile.ask("keeper")  # the next refresh spends the successor
    assert served.token is not None and resource_ok(hostile.sim, served.token)
    assert hostile.grant().generation == 3 and hostile.sim.stats.reuse_detections == 0  # type: ignore[attr-defined]
    hostile.scan()
