"""Re-importing a refresh token that grantkeeper itself already spent.

With a rotating provider that detects reuse (the simulator's default: rotation always, no grace, family
revocation on reuse), sending a spent token revokes the whole grant, the live token included. So an import of a
token that the grant's history shows spent (an attempt sent it and committed a different successor) is refused
up front, naming that attempt and the grant's current generation; nothing is stored and nothing is sent. When
such a token reaches the provider anyway (an import path that did not check), `doctor` calls the rejection
what it is, `stale_local_token`, not a revocation. Both still work after retention pruned the spending attempt:
pruning keeps the spent token's fingerprint, the attempt id, generation and time."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from grantkeeper import HistoryRetention, Keeper, RevokedOrExpired, Secret
from grantkeeper._exceptions import SpentRefreshToken
from grantkeeper.bundle import BundleKey, export_bundle, import_bundle
from tests.cli.test_cli import GRANT, CliWorld, ready, world
from tests.helpers import FAST_POLICY, add_grant

__all__ = ["ready", "world"]  # fixtures, shared with tests/cli/test_cli.py


def _keeper(tmp_path: Path) -> Keeper:
    return Keeper.open(f"sqlite:///{tmp_path}/spent.db", policy=FAST_POLICY)


def _restore(keeper: Keeper, token: str | Secret) -> None:
    """Put `token` back as grant g's refresh token through the store alone, which checks nothing."""
    secret = token if isinstance(token, Secret) else Secret(token)
    keeper.store.import_grant("g", provider="sim", refresh_token=secret, scopes=(), now=keeper.clock.now())


def test_reimport_of_a_spent_token_is_refused_with_the_attempt_that_spent_it(
    make_sim: Callable[..., object], tmp_path: Path
) -> None:
    """Import t0, refresh (t0 spent, t1 current), re-import t0: refused, naming attempt and generations; the
    grant is unchanged and still refreshes; the provider never saw t0 again (no reuse detected)."""
    sim = make_sim()
    with _keeper(tmp_path) as keeper:
        t0 = add_grant(keeper, sim)
        keeper.refresh("g", force=True)
        [spender] = keeper.history("g")
        before = keeper.store.get_grant("g")
        with pytest.raises(SpentRefreshToken) as caught:
            keeper.import_grant("g", provider="sim", refresh_token=t0)
        message = caught.value.message
        assert f"was spent by attempt {spender.id} at " in message
        assert f"the grant's current token is generation {before.generation} ({before.refresh_fp}" in message
        assert t0[:8] not in message
        assert caught.value.exit_code == 3
        assert keeper.store.get_grant("g") == before
        keeper.refresh("g", force=True)
    assert sim.stats.reuse_detections == 0  # type: ignore[attr-defined]
    assert sim.stats.refresh_calls == 2  # type: ignore[attr-defined]


def test_cli_replace_with_a_spent_token_exits_3(ready: CliWorld) -> None:
    """`grant import g --replace` with the token grantkeeper spent: exit 3, error[spent_refresh_token], the
    message names the attempt and the current generation, and the grant keeps working."""
    spent = ready.last_imported
    assert spent is not None
    assert ready.run("refresh", GRANT, "--force").code == 0
    generation = ready.generation()
    out = ready.run("grant", "import", GRANT, "--provider", "sim", "--replace", stdin=spent + "\n")
    assert out.code == 3, out.stderr
    assert out.stderr.startswith("grantkeeper: error[spent_refresh_token]: "), out.stderr
    assert "this refresh token" in out.stderr and "was spent by attempt " in out.stderr
    assert f"current token is generation {generation}" in out.stderr
    assert ready.generation() == generation
    assert ready.run("refresh", GRANT, "--force").code == 0
    assert ready.sim.stats.reuse_detections == 0  # type: ignore[attr-defined]


def test_a_token_kept_by_a_non_rotating_provider_may_be_imported_again(
    make_sim: Callable[..., object], tmp_path: Path
) -> None:
    """No false refusal: a provider that does not rotate keeps the token valid after a refresh (the history
    records rotated = false), so importing it again is allowed."""
    sim = make_sim(rotation="never")
    with _keeper(tmp_path) as keeper:
        t0 = add_grant(keeper, sim, rotation="never")
        keeper.refresh("g", force=True)
        again = keeper.import_grant("g", provider="sim", refresh_token=t0)
        assert again.refresh_token == Secret(t0)
        keeper.refresh("g", force=True)


def test_a_spent_token_that_slips_through_is_diagnosed_stale_local_token(
    make_sim: Callable[..., object], tmp_path: Path
) -> None:
    """A path that does not check (here the store's own import_grant, as a hand-written restore would call it)
    puts the spent token back. The provider refuses it and revokes the family; the grant needs re-authorization,
    but doctor says stale_local_token and names the attempt that spent the token."""
    sim = make_sim()
    with _keeper(tmp_path) as keeper:
        t0 = add_grant(keeper, sim)
        keeper.refresh("g", force=True)
        [spender] = keeper.history("g")
        _restore(keeper, t0)
        with pytest.raises(RevokedOrExpired):
            keeper.refresh("g", force=True)
        diagnosis = keeper.doctor("g")
    assert sim.stats.reuse_detections == 1  # type: ignore[attr-defined]
    assert diagnosis.cause == "stale_local_token"
    assert diagnosis.state == "needs_reauth"
    assert diagnosis.evidence["spent_by"]["id"] == spender.id
    assert "not a revocation" in diagnosis.summary
    assert any(f"spent by attempt {spender.id}" in fact for fact in diagnosis.facts)
    json.dumps(diagnosis.as_dict())  # the evidence stays JSON


def test_pruned_from_the_history_a_spent_token_is_still_recognised(
    make_sim: Callable[..., object], store_url: str
) -> None:
    """Retention keeps one attempt per grant; 64 refreshes later the commit-time prune has deleted the attempt
    that spent t0. Re-importing t0 is still refused (naming that attempt, "since pruned"), and when a restore
    that does not check puts t0 back anyway, doctor still says stale_local_token. Every store kind (memory, SQLite,
    PostgreSQL). A bundle taken before the refreshes is refused too."""
    sim = make_sim()
    key = BundleKey.passphrase(Secret("correct horse battery"))
    with Keeper.open(store_url, policy=FAST_POLICY, retention=HistoryRetention(per_grant=1)) as keeper:
        t0 = add_grant(keeper, sim)
        backup = export_bundle(keeper.store, key, now=keeper.clock.now(), scrypt_n=2**14)
        keeper.refresh("g", force=True)
        [spender] = keeper.history("g")
        for _ in range(63):
            keeper.refresh("g", force=True)
        assert spender.id not in [a.id for a in keeper.history("g", limit=100)]
        with pytest.raises(SpentRefreshToken) as caught:
            keeper.import_grant("g", provider="sim", refresh_token=t0)
        assert f"was spent by attempt {spender.id} at " in caught.value.message
        assert "since pruned from the kept history" in caught.value.message
        with pytest.raises(SpentRefreshToken, match="since pruned from the kept history"):
            import_bundle(keeper.store, backup, key, replace=True, now=keeper.clock.now())
        _restore(keeper, t0)
        with pytest.raises(RevokedOrExpired):
            keeper.refresh("g", force=True)
        diagnosis = keeper.doctor("g")
    assert diagnosis.cause == "stale_local_token"
    assert diagnosis.evidence["spent_by"]["id"] == spender.id
    assert sim.stats.reuse_detections == 1  # type: ignore[attr-defined]
