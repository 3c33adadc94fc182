"""Every failure class produced for real against the provider simulator, then explained by `doctor` with its
evidence; the attempt history behind it; and no token in any doctor or history output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from grantkeeper import (
    ClientAuthFailed,
    Keeper,
    MalformedResponse,
    OutcomeClass,
    ProviderUnavailable,
    RefreshPolicy,
    ReuseDetected,
    RevokedOrExpired,
    Secret,
)
from grantkeeper.cli.main import cli
from grantkeeper.testing.clock import FakeClock
from grantkeeper.testing.simulator import HttpError, Malformed
from tests.helpers import FAST_POLICY, add_grant, provider_for

Sim = Callable[..., object]

CHILD = """
import json, sys
from grantkeeper import GrantkeeperError, Keeper, RefreshPolicy
policy = RefreshPolicy(lease_ttl=1.5, request_timeout=0.25, wait_timeout=30, deadline=10)
with Keeper.open(sys.argv[1], policy=policy) as keeper:
    print(json.dumps({"worker": keeper.worker}), flush=True)
    try:
        grant = keeper.refresh("g", force=True)
        print(json.dumps({"generation": grant.generation}))
    except GrantkeeperError as exc:
        print(json.dumps({"error": exc.code, "attempt_id": exc.attempt_id}))
"""


def child(url: str, failpoint: str | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "GRANTKEEPER_FAILPOINTS"}
    if failpoint:
        env["GRANTKEEPER_FAILPOINTS"] = failpoint
    return subprocess.Popen([sys.executable, "-c", CHILD, url], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


CHILD_STDERR: list[str] = []


def outputs(proc: subprocess.Popen[str]) -> list[dict[str, object]]:
    """The JSON lines a child printed; its stderr (logs) goes to CHILD_STDERR for the leak checks."""
    out, err = proc.communicate(timeout=120)
    CHILD_STDERR.append(err)
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert lines, err
    return lines


def doctor_cli(url: str, name: str = "g") -> tuple[int, str, dict[str, object]]:
    runner = CliRunner()
    human = runner.invoke(cli, ["--store", url, "doctor", name])
    machine = runner.invoke(cli, ["--store", url, "doctor", name, "--json"])
    assert human.exit_code == machine.exit_code, (human.output, machine.output)
    return human.exit_code, human.stdout, json.loads(machine.stdout)


def history_cli(url: str, name: str = "g") -> tuple[str, list[dict[str, object]]]:
    runner = CliRunner()
    table = runner.invoke(cli, ["--store", url, "history", name, "--limit", "50"])
    data = runner.invoke(cli, ["--store", url, "history", name, "--json"])
    assert table.exit_code == 0 and data.exit_code == 0, (table.output, data.output)
    return table.stdout, json.loads(data.stdout)


def assert_no_token(sim: object, *texts: str) -> None:
    """No issued token, nor any 8-character fragment of one, appears in `texts`."""
    tokens = sim.issued_tokens()  # type: ignore[attr-defined]
    assert tokens
    blob = "\n".join(texts)
    for token in tokens:
        fragments = {token[i : i + 8] for i in range(0, len(token) - 7)}
        leaked = [f for f in fragments if f in blob]
        assert not leaked, f"token fragment {leaked[0]!r} leaked"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path}/grants.db"


@pytest.fixture
def store_url(url: str) -> str:
    """The shared `keeper` fixture opens this SQLite store, which the CLI checks read too."""
    return url


def test_healthy_grant_and_its_history(keeper: Keeper, url: str, make_sim: Sim) -> None:
    """Two refreshes: doctor says healthy; history shows both attempts newest first with the worker, thread,
    generations, the fingerprints sent and received, rotation and latency."""
    sim = make_sim(rotation="always")
    add_grant(keeper, sim)
    imported_fp = keeper.store.get_grant("g").refresh_fp
    keeper.refresh("g", force=True)
    second = keeper.refresh("g", force=True)
    assert second.generation == 3
    diagnosis = keeper.doctor("g")
    assert diagnosis.cause == "healthy" and diagnosis.healthy
    newest, oldest = keeper.history("g")
    assert (oldest.generation, oldest.new_generation, newest.generation, newest.new_generation) == (1, 2, 2, 3)
    assert oldest.refresh_fp == imported_fp and oldest.received_fp == newest.refresh_fp != imported_fp
    assert newest.received_fp == second.refresh_fp and newest.rotated is True
    assert newest.worker == keeper.worker and newest.actor == threading.current_thread().name
    assert newest.outcome_class is OutcomeClass.COMMITTED and newest.latency is not None and newest.latency >= 0
    code, text, data = doctor_cli(url)
    assert code == 0 and text.startswith("g: healthy\n") and data["cause"] == "healthy"
    table, rows = history_cli(url)
    assert [r["id"] for r in rows] == [newest.id, oldest.id]
    assert rows[0]["sent_fp"] == newest.refresh_fp and rows[0]["received_fp"] == second.refresh_fp
    assert table.splitlines()[0].split() == ["time", "id", "worker", "gen", "sent", "received", "rotated", "latency",
                                             "outcome"]  # fmt: skip
    assert "2->3" in table.splitlines()[1] and "committed" in table.splitlines()[1]
    assert_no_token(sim, text, json.dumps(data), table, json.dumps(rows))


def test_not_rotating_provider_history_says_not_rotated(keeper: Keeper, make_sim: Sim) -> None:
    sim = make_sim(rotation="never")
    add_grant(keeper, sim, rotation="never")
    keeper.refresh("g", force=True)
    (attempt,) = keeper.history("g")
    assert attempt.rotated is False and attempt.received_fp is None


@pytest.mark.slow
@pytest.mark.parametrize("reuse_detection", [False, True])
def test_second_process_sending_an_old_token(url: str, make_sim: Sim, tmp_path: Path, reuse_detection: bool) -> None:
    """Process B claims the grant and is held before sending; its lease expires and this process refreshes
    (generation 2); then B sends its old generation-1 token. Doctor names it stale_local_token: the generation
    sent, the current one, and who committed that. With a reuse-detecting provider the next refresh finds the
    family revoked and doctor says reuse_detected, naming the two attempts that used the token."""
    sim = make_sim(rotation="always", reuse_detection=reuse_detection)
    with Keeper.open(url, policy=FAST_POLICY) as k:
        add_grant(k, sim)
    go = tmp_path / "go"
    b = child(url, failpoint=f"before_send=wait:{go}")
    b_worker = json.loads(b.stdout.readline())["worker"]  # type: ignore[union-attr]
    policy = RefreshPolicy(lease_ttl=1.5, request_timeout=0.25, wait_timeout=60, deadline=10)
    with Keeper.open(url, policy=policy) as k:
        deadline = time.monotonic() + 60
        while (holder := k.store.lease_holder("g", now=time.time())) is None or holder.worker != b_worker:
            assert time.monotonic() < deadline, "process B never took the lease"
            time.sleep(0.02)
        # Waits for B's lease to expire, then re-sends B's open attempt (generation 2) and, since a re-send's
        # answer is not served on trust, refreshes once more with the successor (generation 3).
        assert k.refresh("g", force=True).generation == 3
        committer, resend = k.history("g")[:2]
        go.touch()
        (b_result,) = outputs(b)
        assert b_result["error"] == "lease_lost"  # B may not retry: its lease was taken over
        diagnosis = k.doctor("g")
        assert diagnosis.cause == "stale_local_token"
        ev = diagnosis.evidence
        assert (ev["sent_generation"], ev["current_generation"]) == (1, 3)
        assert ev["committed_by"]["id"] == committer.id and ev["committed_by"]["worker"] == k.worker  # type: ignore[index]
        assert ev["attempt"]["worker"] == b_worker  # type: ignore[index]
        code, text, data = doctor_cli(url)
        assert code == 12 and "stale_local_token" in text and f"attempt {committer.id}" in text
        assert "not a revocation" in text and data["cause"] == "stale_local_token"
        if not reuse_detection:
            assert k.refresh("g", force=True).generation == 4
            assert k.doctor("g").cause == "stale_local_token"  # a local bug stays reported after recovery
            return
        with pytest.raises(ReuseDetected):
            k.refresh("g", force=True)
        diagnosis = k.doctor("g")
    assert diagnosis.cause == "reuse_detected"
    used_by = {a["id"] for a in diagnosis.evidence["used_by"]}  # type: ignore[union-attr]
    assert used_by == {resend.id, ev["attempt"]["id"]}  # type: ignore[index]
    code, text, data = doctor_cli(url)
    assert code == 12 and "reuse_detected" in text and "stale" in text
    table, rows = history_cli(url)
    assert_no_token(sim, text, json.dumps(data), table, json.dumps(rows), *CHILD_STDERR)


@pytest.mark.slow
def test_sigkill_after_send_without_grace(url: str, make_sim: Sim) -> None:
    """A worker SIGKILLed after the provider rotated (grace 0): doctor first says in_flight (the crashed attempt,
    its worker, outside the grace); after the re-send is refused it says lost_in_flight naming that attempt."""
    sim = make_sim(rotation="always", reuse_grace=0)
    with Keeper.open(url, policy=FAST_POLICY) as k:
        add_grant(k, sim)
    crashed = child(url, failpoint="after_send=kill")
    (hello,) = outputs(crashed)
    assert crashed.returncode == -signal.SIGKILL
    with Keeper.open(url, policy=FAST_POLICY) as k:
        pending = k.doctor("g")
        assert pending.cause == "in_flight" and pending.evidence["attempt"]["worker"] == hello["worker"]  # type: ignore[index]
        assert any("will be refused" in fact for fact in pending.facts)
    recovered = child(url)
    assert outputs(recovered)[-1]["error"] == "lost_in_flight"
    with Keeper.open(url, policy=FAST_POLICY) as k:
        diagnosis = k.doctor("g")
    assert diagnosis.cause == "lost_in_flight" and diagnosis.state == "needs_reauth"
    spent_by = diagnosis.evidence["spent_by"]
    assert spent_by["id"] == pending.attempt_id and spent_by["worker"] == hello["worker"]  # type: ignore[index]
    assert spent_by["state"] == "open" and diagnosis.evidence["reuse_grace"] == 0  # type: ignore[index]
    code, text, data = doctor_cli(url)
    assert code == 12 and f"spent by attempt {pending.attempt_id}" in text and "worker died" in text
    table, rows = history_cli(url)
    assert rows[0]["outcome_class"] == "lost_in_flight" and rows[0]["resend_of"] == pending.attempt_id
    assert_no_token(sim, text, json.dumps(data), table, json.dumps(rows), *CHILD_STDERR)


def test_revoked_grant(keeper: Keeper, make_sim: Sim) -> None:
    """The latest token rejected with no lifetime passed: revoked_or_expired, reason revoked. (The grant was
    refreshed once: a token refused on its very first use after an import is never_accepted, see
    tests/cli/test_import_input.py.)"""
    sim = make_sim()
    refresh = add_grant(keeper, sim)
    keeper.add_provider(replace(provider_for(sim), refresh_idle_ttl=86400.0))
    keeper.refresh("g", force=True)
    sim.revoke_family(refresh)  # type: ignore[attr-defined]
    with pytest.raises(RevokedOrExpired):
        keeper.refresh("g", force=True)
    diagnosis = keeper.doctor("g")
    assert diagnosis.cause == "revoked_or_expired" and diagnosis.evidence["reason"] == "revoked"
    assert "withdrawn" in diagnosis.summary


def test_idle_expired_grant_uses_the_providers_lifetime(tmp_path: Path, make_sim: Sim) -> None:
    """Unused longer than the provider's idle lifetime, then rejected: doctor says the idle lifetime passed."""
    sim = make_sim()
    clock = FakeClock(start=time.time())
    with Keeper.open(f"sqlite://{tmp_path}/g.db", policy=FAST_POLICY, clock=clock) as k:
        refresh = str(sim.issue_grant())  # type: ignore[attr-defined]
        k.add_provider(replace(provider_for(sim), refresh_idle_ttl=30 * 86400.0))
        k.import_grant("g", provider="sim", refresh_token=refresh)
        clock.advance(31 * 86400)
        sim.revoke_family(refresh)  # what the provider does when the idle lifetime passes
        with pytest.raises(RevokedOrExpired):
            k.refresh("g")
        diagnosis = k.doctor("g")
    assert diagnosis.evidence["reason"] == "idle_lifetime"
    assert "idle lifetime passed" in diagnosis.summary and "keepalive" in diagnosis.next_step
    assert any("unused for 31.0 days of the provider's 30.0 days" in f for f in diagnosis.facts)


def test_grant_past_the_expiry_the_provider_stated(tmp_path: Path, make_sim: Sim) -> None:
    """The provider said when the refresh token expires (refresh_token_expires_in); rejected after that:
    doctor names the stated expiry as the reason."""
    sim = make_sim(response_quirks=("refresh_token_expires_in",), refresh_token_ttl=7 * 86400.0)
    clock = FakeClock(start=time.time())
    with Keeper.open(f"sqlite://{tmp_path}/g.db", policy=FAST_POLICY, clock=clock) as k:
        refresh = add_grant(k, sim)
        stated = k.refresh("g", force=True)
        assert stated.refresh_expires_at is not None
        clock.advance(8 * 86400)
        sim.revoke_family(stated.refresh_token.reveal() if stated.refresh_token else refresh)  # type: ignore[attr-defined]
        with pytest.raises(RevokedOrExpired):
            k.refresh("g", force=True)
        diagnosis = k.doctor("g")
    assert diagnosis.evidence["reason"] == "stated_expiry" and "stated" in diagnosis.summary
    assert any("the provider said this refresh token expires at" in f for f in diagnosis.facts)


def test_wrong_client_secret(keeper: Keeper, url: str, make_sim: Sim) -> None:
    """A wrong client secret: client_auth_failed, the grant untouched, the credentials named (not the secret)."""
    sim = make_sim()
    add_grant(keeper, sim)
    keeper.add_provider(replace(provider_for(sim), client_secret=Secret("wrong-secret-value")))
    with pytest.raises(ClientAuthFailed):
        keeper.refresh("g", force=True)
    diagnosis = keeper.doctor("g")
    assert diagnosis.cause == "client_auth_failed" and diagnosis.state == "active" and diagnosis.generation == 1
    assert diagnosis.evidence["error_code"] == "invalid_client" and diagnosis.evidence["http_status"] == 401
    code, text, data = doctor_cli(url)
    assert code == 12 and "untouched" in text and "wrong-secret-value" not in text + json.dumps(data)
    table, rows = history_cli(url)
    assert rows[0]["error_code"] == "invalid_client" and "wrong-secret-value" not in table + json.dumps(rows)
    assert_no_token(sim, text, json.dumps(data), table, json.dumps(rows))


def test_provider_unavailable(keeper: Keeper, make_sim: Sim) -> None:
    sim = make_sim()
    add_grant(keeper, sim)
    sim.inject(HttpError(503), times=10)  # type: ignore[attr-defined]
    with pytest.raises(ProviderUnavailable):
        keeper.refresh("g", force=True)
    diagnosis = keeper.doctor("g")
    assert diagnosis.cause == "provider_unavailable"
    assert diagnosis.evidence["failed_attempts"] == FAST_POLICY.max_tries
    assert diagnosis.evidence["answers"] == ["HTTP 503"]
    assert keeper.history("g")[0].http_status == 503


def test_malformed_response(keeper: Keeper, make_sim: Sim) -> None:
    sim = make_sim()
    add_grant(keeper, sim)
    sim.inject(Malformed("html"))  # type: ignore[attr-defined]
    with pytest.raises(MalformedResponse):
        keeper.refresh("g", force=True)
    diagnosis = keeper.doctor("g")
    assert diagnosis.cause == "malformed_response" and diagnosis.evidence["http_status"] == 200
    # The re-send after an unreadable 200 works (2), and one more refresh replaces its access token (3).
    assert keeper.refresh("g", force=True).generation == 3
    assert keeper.doctor("g").cause == "healthy"


def test_history_limit_and_unknown_grant(keeper: Keeper, url: str, make_sim: Sim) -> None:
    sim = make_sim()
    add_grant(keeper, sim)
    for _ in range(4):
        keeper.refresh("g", force=True)
    assert len(keeper.history("g", limit=2)) == 2
    result = CliRunner().invoke(cli, ["--store", url, "history", "g", "--limit", "3", "--json"])
    assert [r["new_generation"] for r in json.loads(result.stdout)] == [5, 4, 3]
    for command in ("doctor", "history"):
        missing = CliRunner().invoke(cli, ["--store", url, command, "nope"])
        assert missing.exit_code == 3 and "unknown_grant" in missing.stderr
