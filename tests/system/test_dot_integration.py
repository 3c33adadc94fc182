"""grantkeeper against django-oauth-toolkit (DOT), an independent authorization server (docs/testing-against-dot.md).

Every grant here is obtained through DOT's real pages (login, consent, PKCE S256, loopback redirect) by the
scripted browser, imported with `Keeper.import_grant`, and refreshed by grantkeeper over loopback against
DOT's /o/token/. What DOT saw is read from its token-call log and its database, not from grantkeeper.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from grantkeeper import (
    AsyncKeeper,
    AttemptState,
    AuthMethod,
    ClientAuthFailed,
    GrantState,
    Keeper,
    NeedsReauth,
    RevokedOrExpired,
    Secret,
)
from grantkeeper.model import OutcomeClass
from tests.dot_browser import AuthorizedGrant, authorize
from tests.dot_server import REPO, DotFactory, DotServer
from tests.dot_workers import DOT_POLICY, check_dot
from tests.workers import run_hammers

#: Failpoints after DOT has answered (and rotated) but before grantkeeper committed the answer.
CRASH_POINTS = ["after_send", "before_commit"]


def connect(keeper: Keeper, server: DotServer, grant: str = "g") -> AuthorizedGrant:
    """Log in and consent through the browser, then import the grant DOT issued."""
    authorized = authorize(server)
    keeper.add_provider(server.provider())
    keeper.import_grant(grant, provider="dot", refresh_token=authorized.refresh_token,
                        scopes=tuple(authorized.scope.split()))  # fmt: skip
    return authorized


def current_refresh_token(keeper: Keeper, grant: str = "g") -> str:
    token = keeper.store.get_grant(grant).refresh_token
    assert token is not None
    return token.reveal()


def refresh_statuses(server: DotServer, mark: int) -> list[tuple[int, str | None]]:
    """(status, OAuth error) of each refresh_token call DOT answered since `mark`, in order."""
    return [(c["status"], c["error"]) for c in server.token_calls(mark, grant_type="refresh_token")]


def run_child(url: str, *, failpoint: str | None = None, force: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GRANTKEEPER_FAILPOINTS"}
    if failpoint:
        env["GRANTKEEPER_FAILPOINTS"] = f"{failpoint}=kill"
    return subprocess.run(
        [sys.executable, "-m", "tests.dot_workers", url, "g", "force" if force else "plain"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def recover(url: str) -> dict[str, object]:
    """A fresh process asks for the grant (no force): it finds the crashed attempt and deals with it."""
    result = run_child(url, force=False)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_browser_grant_refreshes_with_rotation(tmp_path: Path, dot_server: DotFactory,
                                               caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """ROTATE_REFRESH_TOKEN on: each refresh advances the generation by one, DOT returns a new refresh token each
    time (history says rotated), every spent one is refused by DOT, and the latest one keeps working. No token
    DOT issued appears in grantkeeper's logs."""
    caplog.set_level(logging.DEBUG)
    server = dot_server()
    with Keeper.open(f"sqlite://{tmp_path}/s.db", policy=DOT_POLICY) as keeper:
        authorized = connect(keeper, server)
        spent = [authorized.refresh_token]
        for generation in (2, 3, 4):
            assert keeper.refresh("g", force=True).generation == generation
            token = current_refresh_token(keeper)
            assert token not in spent
            spent.append(token)
        committed = [a for a in keeper.history("g") if a.state is AttemptState.COMMITTED]
        assert [(a.new_generation, a.rotated) for a in committed] == [(4, True), (3, True), (2, True)]
        assert len({a.received_fp for a in committed}) == 3

        mark = server.log_mark()
        for old in spent[:-1]:
            refused = server.refresh_directly(old)
            assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant")
        assert refresh_statuses(server, mark) == [(400, "invalid_grant")] * 3

        # DOT deleted the access token of each spent refresh token; the one grantkeeper serves is accepted.
        assert server.resource_status(authorized.access_token) == (401, "unknown")
        assert server.resource_status(keeper.access_token("g")) == (200, None)
        # One family, one live member: the token grantkeeper holds (refusing stale copies did it no harm).
        family = server.family(authorized.refresh_token)
        assert [m["revoked"] for m in family] == [True, True, True, False]
        assert keeper.refresh("g", force=True).generation == 5
        spent.append(current_refresh_token(keeper))
        served = keeper.access_token("g")
    assert caplog.records  # captured at DEBUG: grantkeeper, httpx and httpcore (the transport) alike
    assert not [t for t in [*spent, served, authorized.access_token] if t in caplog.text]


def test_without_rotation_the_refresh_token_is_kept(tmp_path: Path, dot_server: DotFactory) -> None:
    """ROTATE_REFRESH_TOKEN off: DOT returns the same refresh token; the generation still advances for each new
    access token, history says not rotated, and DOT holds one live refresh token."""
    server = dot_server(rotate=False)
    with Keeper.open(f"sqlite://{tmp_path}/s.db", policy=DOT_POLICY) as keeper:
        authorized = connect(keeper, server)
        first = keeper.refresh("g", force=True)
        second = keeper.refresh("g", force=True)
        assert (first.generation, second.generation) == (2, 3)
        assert current_refresh_token(keeper) == authorized.refresh_token
        committed = [a for a in keeper.history("g") if a.state is AttemptState.COMMITTED]
        assert [a.rotated for a in committed] == [False, False]
        assert server.resource_status(keeper.access_token("g")) == (200, None)
    family = server.family(authorized.refresh_token)
    assert [(m["revoked"], m["has_access_token"]) for m in family] == [(False, True)]


@pytest.mark.slow
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_after_send_is_recovered_inside_the_grace_period(tmp_path: Path, dot_server: DotFactory,
                                                                 point: str) -> None:  # fmt: skip
    """REFRESH_TOKEN_GRACE_PERIOD_SECONDS=30: a process killed after DOT rotated the token (its answer never
    stored) is followed by one re-send of the spent token inside the grace; DOT answers it with the successor
    it already issued, which is committed as generation 2 and works: the one extra refresh that replaces the
    re-send's access token (never served on trust) spends it, and DOT accepts it (generation 3)."""
    server = dot_server(grace=30)
    url = f"sqlite://{tmp_path}/s.db"
    with Keeper.open(url, policy=DOT_POLICY) as keeper:
        authorized = connect(keeper, server)
    mark = server.log_mark()
    assert run_child(url, failpoint=point).returncode == -signal.SIGKILL
    assert recover(url) == {"generation": 3}
    with Keeper.open(url, policy=DOT_POLICY) as keeper:
        verify, resend, crashed = keeper.history("g")[:3]
        assert crashed.state is AttemptState.ABANDONED
        assert resend.resend_of == crashed.id and resend.state is AttemptState.COMMITTED
        assert verify.resend_of is None and verify.state is AttemptState.COMMITTED
        # The original request, the one re-send and the extra refresh, all answered: DOT's successor was live.
        assert refresh_statuses(server, mark) == [(200, None)] * 3
        assert len(server.family(authorized.refresh_token)) == 3
        assert server.resource_status(keeper.access_token("g")) == (200, None)
        assert keeper.refresh("g", force=True).generation == 4
    assert refresh_statuses(server, mark)[-1] == (200, None)


@pytest.mark.slow
def test_grace_replay_of_an_expired_access_token_is_never_served(tmp_path: Path, dot_server: DotFactory) -> None:
    """DOT answers a re-send inside the grace with the access token it issued the first time and a fresh
    ``expires_in``, even when that token has already expired (docs/design.md failure table). grantkeeper commits the
    successor, never serves that access token, and refreshes once more with the successor: the token it hands out
    is accepted, with no 401 and no report needed."""
    server = dot_server(grace=30, access_ttl=2)
    url = f"sqlite://{tmp_path}/s.db"
    with Keeper.open(url, policy=DOT_POLICY) as keeper:
        connect(keeper, server)
    mark = server.log_mark()
    assert run_child(url, failpoint="after_send").returncode == -signal.SIGKILL
    time.sleep(server.config.access_ttl + 0.5)  # let the access token DOT issued to the killed process expire
    with Keeper.open(url, policy=DOT_POLICY) as keeper:
        served = keeper.access_token("g")
        verify, resend, crashed = keeper.history("g")[:3]
        assert resend.resend_of == crashed.id and resend.state is AttemptState.COMMITTED
        assert verify.resend_of is None and verify.new_generation == 3
        assert server.resource_status(served) == (200, None)
        grant = keeper.store.get_grant("g")
        assert grant.generation == 3 and grant.access_verified
    assert refresh_statuses(server, mark) == [(200, None)] * 3  # original, grace re-send, the one extra refresh


@pytest.mark.slow
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_after_send_without_grace_is_lost_in_flight(tmp_path: Path, dot_server: DotFactory,
                                                            point: str) -> None:  # fmt: skip
    """Grace 0: the same crash loses the grant. The one re-send is refused (invalid_grant) and reported as
    lost_in_flight naming the crashed attempt; doctor says so; nothing further is sent to DOT."""
    server = dot_server()
    url = f"sqlite://{tmp_path}/s.db"
    with Keeper.open(url, policy=DOT_POLICY) as keeper:
        authorized = connect(keeper, server)
    mark = server.log_mark()
    assert run_child(url, failpoint=point).returncode == -signal.SIGKILL
    with Keeper.open(url) as keeper:
        crashed = keeper.history("g")[0]
    assert recover(url) == {"error": "lost_in_flight", "attempt_id": crashed.id}
    assert refresh_statuses(server, mark) == [(200, None), (400, "invalid_grant")]
    # The loss is real: DOT issued a successor (live, with its access token) that only the killed process saw.
    assert [(m["revoked"], m["has_access_token"]) for m in server.family(authorized.refresh_token)] == [
        (True, False),
        (False, True),
    ]
    with Keeper.open(url) as keeper:
        assert keeper.store.get_grant("g").state is GrantState.NEEDS_REAUTH
        diagnosis = keeper.doctor("g")
    assert diagnosis.cause == "lost_in_flight"
    assert diagnosis.evidence["spent_by"]["id"] == crashed.id
    assert any(f"attempt {crashed.id}" in fact for fact in diagnosis.facts)
    report = json.dumps(diagnosis.as_dict())
    assert authorized.refresh_token not in report and authorized.access_token not in report
    assert recover(url)["error"] == "needs_reauth"
    assert len(refresh_statuses(server, mark)) == 2


@pytest.mark.parametrize("protection", [True, False], ids=["reuse-protection", "no-reuse-protection"])
def test_reuse_of_a_spent_token_elsewhere(tmp_path: Path, dot_server: DotFactory, protection: bool) -> None:
    """A stale copy of an already spent refresh token is sent by someone else. With
    REFRESH_TOKEN_REUSE_PROTECTION, DOT revokes the whole family, so grantkeeper's next refresh is refused and
    the grant needs re-consent; without it, only the stale copy is refused and grantkeeper carries on."""
    server = dot_server(reuse_protection=protection)
    with Keeper.open(f"sqlite://{tmp_path}/s.db", policy=DOT_POLICY) as keeper:
        authorized = connect(keeper, server)
        keeper.refresh("g", force=True)
        served = keeper.access_token("g")
        mark = server.log_mark()
        stale = server.refresh_directly(authorized.refresh_token)
        assert (stale.status_code, stale.json()["error"]) == (400, "invalid_grant")
        family = server.family(authorized.refresh_token)
        if not protection:
            assert [m["revoked"] for m in family] == [True, False]
            assert keeper.refresh("g", force=True).generation == 3
            assert refresh_statuses(server, mark) == [(400, "invalid_grant"), (200, None)]
            return
        assert [m["revoked"] for m in family] == [True, True]
        assert server.resource_status(served) == (401, "unknown")  # the family's access tokens went with it
        with pytest.raises(NeedsReauth) as raised:
            keeper.refresh("g", force=True)
        # grantkeeper sent the latest refresh token it had committed and never re-sent anything, so from its
        # side the refusal looks exactly like a revocation: it cannot see the other party's reuse that made
        # DOT revoke the family. revoked_or_expired is the truthful answer; reuse_detected is reserved for a
        # refusal that grantkeeper's own re-send explains.
        assert raised.value.code == "revoked_or_expired"
        assert isinstance(raised.value, RevokedOrExpired)
        assert keeper.store.get_grant("g").state is GrantState.NEEDS_REAUTH
        assert keeper.history("g")[0].outcome_class is OutcomeClass.REVOKED_OR_EXPIRED
        assert keeper.doctor("g").cause == "revoked_or_expired"
        # A dead grant is reported from the store: nothing more is sent to DOT.
        with pytest.raises(NeedsReauth):
            keeper.access_token("g")
        assert refresh_statuses(server, mark) == [(400, "invalid_grant"), (400, "invalid_grant")]


def test_revoked_at_dot_fails_as_revoked_or_expired(tmp_path: Path, dot_server: DotFactory) -> None:
    """RFC 7009 revocation at DOT's /o/revoke_token/ of the refresh token grantkeeper holds: the next refresh
    fails with RevokedOrExpired and the grant is marked needs_reauth."""
    server = dot_server()
    with Keeper.open(f"sqlite://{tmp_path}/s.db", policy=DOT_POLICY) as keeper:
        authorized = connect(keeper, server)
        assert keeper.refresh("g", force=True).generation == 2
        revoked = httpx.post(
            server.revoke_url, auth=server.client_auth, timeout=30,
            data={"token": current_refresh_token(keeper), "token_type_hint": "refresh_token"},
        )  # fmt: skip
        assert revoked.status_code == 200
        assert [m["revoked"] for m in server.family(authorized.refresh_token)] == [True, True]
        mark = server.log_mark()
        with pytest.raises(RevokedOrExpired):
            keeper.refresh("g", force=True)
        grant = keeper.store.get_grant("g")
        assert grant.state is GrantState.NEEDS_REAUTH and grant.generation == 2
        latest = keeper.history("g")[0]
        assert latest.outcome_class is OutcomeClass.REVOKED_OR_EXPIRED and latest.error_code == "invalid_grant"
        assert refresh_statuses(server, mark) == [(400, "invalid_grant")]


@pytest.mark.slow
def test_4_processes_x_4_threads_on_one_grant(shared_store_url: str, dot_server: DotFactory) -> None:
    """4 processes x 4 threads call access_token on one grant with 2-second DOT access tokens for 5 seconds:
    zero invalid_grant, every token served is accepted by DOT's protected resource (or was replaced by a
    refresh DOT answered in between), and DOT saw exactly one refresh per committed generation."""
    server = dot_server(access_ttl=2)
    url = shared_store_url  # one SQLite file, or one PostgreSQL database as several hosts would share
    with Keeper.open(url, policy=DOT_POLICY) as keeper:
        authorized = connect(keeper, server)
    mark = server.log_mark()
    totals = run_hammers(4, url, ["g"], 5.0, 4, server.resource_url, check=check_dot, policy=DOT_POLICY, pause=0.01)
    with Keeper.open(url) as keeper:
        advanced = keeper.store.get_grant("g").generation - 1
    assert not [k for k in totals if k.startswith(("error:", "resource_rejected"))], totals
    assert totals["resource_ok"] > 0 and totals["calls"] > 0
    assert advanced >= 2, totals  # several expiries happened during the run
    calls = refresh_statuses(server, mark)
    assert calls == [(200, None)] * advanced, (calls, totals)
    family = server.family(authorized.refresh_token)
    assert len(family) == advanced + 1 and [m["revoked"] for m in family].count(False) == 1


def test_client_secret_post_and_a_wrong_secret(tmp_path: Path, dot_server: DotFactory) -> None:
    """DOT takes the client secret in the body too (client_secret_post). A wrong secret is answered
    invalid_client and classified client_auth_failed: the grant is untouched, and once the provider is fixed
    the same refresh token refreshes."""
    server = dot_server()
    with Keeper.open(f"sqlite://{tmp_path}/s.db", policy=DOT_POLICY) as keeper:
        authorized = connect(keeper, server)
        keeper.add_provider(server.provider(auth_method=AuthMethod.CLIENT_SECRET_POST))
        assert keeper.refresh("g", force=True).generation == 2
        keeper.add_provider(server.provider(client_secret=Secret("not-" + server.accounts.client_secret)))
        mark = server.log_mark()
        with pytest.raises(ClientAuthFailed):
            keeper.refresh("g", force=True)
        assert refresh_statuses(server, mark) == [(401, "invalid_client")]
        grant = keeper.store.get_grant("g")
        assert grant.state is GrantState.ACTIVE and grant.generation == 2
        assert keeper.history("g")[0].outcome_class is OutcomeClass.CLIENT_AUTH_FAILED
        assert keeper.doctor("g").cause == "client_auth_failed"
        keeper.add_provider(server.provider())
        assert keeper.refresh("g", force=True).generation == 3
    assert [m["revoked"] for m in server.family(authorized.refresh_token)] == [True, True, False]


@pytest.mark.anyio
async def test_100_tasks_share_one_refresh_at_dot(tmp_path: Path, dot_server: DotFactory) -> None:
    """The asyncio keeper against DOT: 100 tasks asking for a fresh grant at once cause one refresh at DOT and
    all get the access token it issued, which DOT accepts."""
    server = dot_server()
    url = f"sqlite://{tmp_path}/s.db"
    with Keeper.open(url, policy=DOT_POLICY) as keeper:
        connect(keeper, server)
    mark = server.log_mark()

    async with await AsyncKeeper.open(url, policy=DOT_POLICY) as keeper:
        tokens = await asyncio.gather(*(keeper.access_token("g") for _ in range(100)))
    assert len(set(tokens)) == 1
    assert refresh_statuses(server, mark) == [(200, None)]
    assert server.resource_status(tokens[0]) == (200, None)


@pytest.mark.slow
def test_keepalive_outruns_dots_refresh_token_expiry(tmp_path: Path, dot_server: DotFactory) -> None:
    """REFRESH_TOKEN_EXPIRE_SECONDS: DOT kills a refresh token left unused for its access lifetime plus that
    setting (6 s here). Of two grants refreshed together, the one `keepalive` refreshes in time lives on; the
    other is refused by DOT once the lifetime has passed, and grantkeeper calls it revoked_or_expired."""
    server = dot_server(access_ttl=2, refresh_ttl=4)
    idle_ttl = server.config.refresh_idle_ttl
    assert idle_ttl == 6.0
    kept, left = f"sqlite://{tmp_path}/kept.db", f"sqlite://{tmp_path}/left.db"
    with Keeper.open(kept, policy=DOT_POLICY) as keeper:
        connect(keeper, server)
        keeper.refresh("g", force=True)
    with Keeper.open(left, policy=DOT_POLICY) as keeper:
        connect(keeper, server)
        keeper.refresh("g", force=True)
    time.sleep(idle_ttl / 2)
    with Keeper.open(kept, policy=DOT_POLICY) as keeper:
        [result] = keeper.keepalive(margin=idle_ttl)
        assert (result.grant, result.action) == ("g", "refreshed")
    time.sleep(idle_ttl / 2 + 1.0)  # past the left grant's deadline; the kept one was renewed halfway
    with Keeper.open(kept, policy=DOT_POLICY) as keeper:
        assert keeper.refresh("g", force=True).generation == 4
    with Keeper.open(left, policy=DOT_POLICY) as keeper, pytest.raises(RevokedOrExpired):
        keeper.refresh("g", force=True)


def test_cli_from_discovery_to_revocation(tmp_path: Path, dot_server: DotFactory) -> None:
    """The existing CLI against DOT, each command a real process: ``provider discover`` reads DOT's RFC 8414
    metadata, ``grant import`` takes the browser's refresh token on stdin, ``token`` prints an access token DOT
    accepts, ``refresh --force`` rotates; after revocation at DOT, ``refresh`` exits 5 and ``doctor`` names the
    cause. No output shows the client secret or a refresh token; only ``token`` prints an access token."""
    server = dot_server()
    url = f"sqlite://{tmp_path}/cli.db"
    authorized = authorize(server)
    outputs: dict[str, str] = {}

    def gk(*args: str, stdin: str | None = None, code: int = 0) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "grantkeeper", "--store", url, *args],
            cwd=REPO, input=stdin, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == code, (args, result.returncode, result.stderr)
        outputs[" ".join(args[:2])] = result.stdout + result.stderr
        return result.stdout

    discovered = gk("provider", "discover", "dot", "--issuer", server.url("/o"), "--client-id",
                    server.accounts.client_id, "--client-secret-stdin", "--rotation", "always", "--reuse-grace", "0",
                    stdin=server.accounts.client_secret + "\n")  # fmt: skip
    assert server.url("/.well-known/oauth-authorization-server/o") in discovered
    gk("grant", "import", "g", "--provider", "dot", "--scope", "read", "--scope", "write",
       stdin=authorized.refresh_token + "\n")  # fmt: skip
    token = gk("token", "g").strip()
    assert server.resource_status(token) == (200, None)
    gk("refresh", "g", "--force")
    with Keeper.open(url) as keeper:
        provider = keeper.store.get_grant_and_provider("g")[1]
        assert (provider.token_url, provider.auth_method) == (server.token_url, AuthMethod.CLIENT_SECRET_BASIC)
        assert keeper.store.get_grant("g").generation == 3  # imported; refreshed by `token`; by `refresh --force`
        current = current_refresh_token(keeper)
    assert current != authorized.refresh_token
    revoked = httpx.post(server.revoke_url, auth=server.client_auth, timeout=30,
                         data={"token": current, "token_type_hint": "refresh_token"})  # fmt: skip
    assert revoked.status_code == 200
    gk("refresh", "g", "--force", code=5)
    assert json.loads(gk("doctor", "g", "--json", code=12))["cause"] == "revoked_or_expired"

    never = {server.accounts.client_secret, authorized.refresh_token, current}
    assert not [(command, s) for command, out in outputs.items() for s in never if s in out]
    assert [command for command, out in outputs.items() if token in out] == ["token g"]
