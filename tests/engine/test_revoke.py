"""``grantkeeper grant revoke``: RFC 7009 revocation at the provider, then local removal; nothing is removed
unless the provider confirms. Against django-oauth-toolkit's /o/revoke_token/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from grantkeeper import Keeper, Secret, UnknownGrant
from grantkeeper._exceptions import ClientAuthFailed
from grantkeeper.consent import revoke
from tests.dot_browser import authorize
from tests.dot_server import REPO, DotFactory, DotServer


def gk(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "grantkeeper", "--store", url, *args],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def connected(url: str, server: DotServer, **provider: object) -> str:
    """A grant obtained through DOT's pages and imported; returns its refresh token."""
    refresh_token = authorize(server).refresh_token
    with Keeper.open(url) as keeper:
        keeper.add_provider(server.provider(**provider))
        keeper.import_grant("g", provider="dot", refresh_token=refresh_token, scopes=("read", "write"))
    return refresh_token


def gone(url: str) -> bool:
    with Keeper.open(url) as keeper:
        try:
            keeper.store.get_grant("g")
        except UnknownGrant:
            return True
    return False


def test_revoke_at_dot_then_remove(tmp_path: Path, dot_server: DotFactory) -> None:
    """After `grant revoke`, DOT refuses the refresh token and the grant is gone; no output shows a secret."""
    server = dot_server()
    url = f"sqlite://{tmp_path}/gk.db"
    refresh_token = connected(url, server, revocation_url=server.revoke_url)
    mark = server.log_mark()
    out = gk(url, "grant", "revoke", "g")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("grant g revoked at the provider and removed: provider dot, refresh token fp_")
    assert [(c["path"], c["status"]) for c in server.token_calls(mark)] == [("/o/revoke_token/", 200)]
    refused = server.refresh_directly(refresh_token)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    assert gone(url)
    for secret in (refresh_token, server.accounts.client_secret):
        assert secret not in out.stdout + out.stderr


def test_a_refreshed_grant_revokes_its_current_token(tmp_path: Path, dot_server: DotFactory) -> None:
    """What is revoked is the grant's current (rotated) refresh token, through the library call."""
    server = dot_server()
    url = f"sqlite://{tmp_path}/gk.db"
    connected(url, server, revocation_url=server.revoke_url)
    with Keeper.open(url) as keeper:
        keeper.refresh("g", force=True)
        current = keeper.store.get_grant("g").refresh_token
        assert current is not None
        revoked = revoke(keeper, "g")
        assert revoked.generation == 2
    assert server.refresh_directly(current.reveal()).status_code == 400
    assert gone(url)


def test_provider_without_revocation_endpoint(tmp_path: Path, dot_server: DotFactory) -> None:
    """Without a revocation URL the command says so and removes nothing; --local-only only removes it (the
    token stays valid at the provider)."""
    server = dot_server()
    url = f"sqlite://{tmp_path}/gk.db"
    refresh_token = connected(url, server)
    mark = server.log_mark()
    out = gk(url, "grant", "revoke", "g")
    assert out.returncode == 3
    assert "error[configuration]: provider 'dot' has no revocation endpoint" in out.stderr
    assert "--revocation-url" in out.stderr and "--local-only" in out.stderr
    assert not gone(url) and server.token_calls(mark) == []
    local = gk(url, "grant", "revoke", "g", "--local-only")
    assert local.returncode == 0, local.stderr
    assert "removed locally (not revoked at the provider)" in local.stdout
    assert gone(url) and server.token_calls(mark) == []
    assert server.refresh_directly(refresh_token).status_code == 200


def test_refused_revocation_removes_nothing(tmp_path: Path, dot_server: DotFactory) -> None:
    """A wrong client secret: DOT refuses the revocation; the grant stays, and the token still works."""
    server = dot_server()
    url = f"sqlite://{tmp_path}/gk.db"
    refresh_token = connected(url, server, revocation_url=server.revoke_url, client_secret=Secret("wrong" * 8))
    with Keeper.open(url) as keeper, pytest.raises(ClientAuthFailed, match="nothing was removed"):
        revoke(keeper, "g")
    assert not gone(url)
    assert server.refresh_directly(refresh_token).status_code == 200


def test_unknown_grant(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/gk.db"
    Keeper.open(url).close()
    out = gk(url, "grant", "revoke", "nope")
    assert out.returncode == 3 and "error[unknown_grant]" in out.stderr


def test_a_refresh_during_revocation_keeps_the_grant(tmp_path: Path, make_sim: object,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Another worker commits a new refresh token while the old one is being revoked: the grant (holding the
    newer, still valid token) is kept and the error says to run the command again."""
    from grantkeeper import TransientError, consent
    from tests.helpers import FAST_POLICY, add_grant

    sim = make_sim()  # type: ignore[operator]
    with Keeper.open(f"sqlite://{tmp_path}/g.db", policy=FAST_POLICY) as keeper:
        add_grant(keeper, sim)
        revoked: list[str | None] = []

        def revoke_while_another_worker_refreshes(provider: object, grant: object, http: object) -> None:
            revoked.append(grant.refresh_fp)  # type: ignore[attr-defined]
            keeper.refresh("g", force=True)  # what a worker elsewhere does meanwhile

        monkeypatch.setattr(consent, "_revoke_at_provider", revoke_while_another_worker_refreshes)
        with pytest.raises(TransientError, match="refreshed while it was being revoked"):
            revoke(keeper, "g")
        grant = keeper.store.get_grant("g")
        assert grant.generation == 2 and revoked == [keeper.history("g")[0].refresh_fp]
