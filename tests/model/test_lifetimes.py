"""Refresh-token lifetimes: grants record when their refresh token was issued and last used; the keeper reports
what ends within a window (idle, stated, absolute) and keep-alive refreshes only what a refresh can renew. Also:
new provider fields persist in every store, and a version-1 store migrates forward."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from grantkeeper import GrantState, Keeper, Provider, StoreFormatError
from grantkeeper.model import AuthMethod, RotationMode
from grantkeeper.stores import open_store
from grantkeeper.stores import sqlite as sqlite_module
from grantkeeper.stores.migrations import migrations
from grantkeeper.testing import FakeClock
from tests.helpers import FAST_POLICY, provider_for
from tests.signing_keys import key_file

Sim = Any
DAY = 86400.0


def keeper_for(sim: Sim, store_url: str, clock: FakeClock, **options: Any) -> Keeper:
    keeper = Keeper.open(store_url, policy=FAST_POLICY, clock=clock)
    base = provider_for(sim)
    keeper.add_provider(Provider(**{**{k: getattr(base, k) for k in base.__dataclass_fields__}, **options}))
    keeper.import_grant("g", provider="sim", refresh_token=sim.issue_grant())
    return keeper


class TestRecordedTimes:
    def test_rotation_restarts_the_issue_time(self, make_sim: Callable[..., Sim], store_url: str) -> None:
        sim = make_sim(rotation="always")
        clock = FakeClock()
        with keeper_for(sim, store_url, clock) as keeper:
            imported = keeper.store.get_grant("g")
            clock.advance(DAY)
            refreshed = keeper.refresh("g", force=True)
        assert imported.refresh_issued_at == imported.refreshed_at == clock.now() - DAY
        assert refreshed.refresh_issued_at == refreshed.refreshed_at == clock.now()
        assert refreshed.refresh_fp != imported.refresh_fp

    def test_kept_token_keeps_its_issue_time(self, make_sim: Callable[..., Sim], store_url: str) -> None:
        sim = make_sim(rotation="never")
        clock = FakeClock()
        with keeper_for(sim, store_url, clock, rotation=RotationMode.NEVER) as keeper:
            clock.advance(DAY)
            refreshed = keeper.refresh("g", force=True)
        assert refreshed.refresh_issued_at == clock.now() - DAY
        assert refreshed.refreshed_at == clock.now()

    def test_reimport_resets_lifetimes(self, make_sim: Callable[..., Sim], store_url: str) -> None:
        sim = make_sim(response_quirks=("refresh_token_expires_in",))
        clock = FakeClock()
        with keeper_for(sim, store_url, clock) as keeper:
            assert keeper.refresh("g", force=True).refresh_expires_at is not None
            clock.advance(DAY)
            again = keeper.import_grant("g", provider="sim", refresh_token=sim.issue_grant())
        assert (again.refresh_issued_at, again.refresh_expires_at) == (clock.now(), None)


class TestExpiring:
    def test_idle_lifetime_is_renewable(self, make_sim: Callable[..., Sim], store_url: str) -> None:
        sim = make_sim()
        clock = FakeClock()
        with keeper_for(sim, store_url, clock, refresh_idle_ttl=60 * DAY) as keeper:
            clock.advance(50 * DAY)
            assert keeper.expiring(7 * DAY) == []
            clock.advance(5 * DAY)
            [end] = keeper.expiring(7 * DAY)
            assert (end.grant, end.kind, end.renewable, end.deadline) == ("g", "idle", True, clock.now() + 5 * DAY)
            [result] = keeper.keepalive(margin=7 * DAY)
            assert result.action == "refreshed"
            assert keeper.expiring(7 * DAY) == []

    def test_absolute_lifetime_needs_consent_and_wins(self, make_sim: Callable[..., Sim], store_url: str) -> None:
        """When the consent ends inside the window, that is what is reported, even if the idle end is sooner."""
        sim = make_sim()
        clock = FakeClock()
        with keeper_for(sim, store_url, clock, refresh_idle_ttl=2 * DAY, refresh_absolute_ttl=5 * DAY) as keeper:
            clock.advance(DAY)
            [end] = keeper.expiring(7 * DAY)
            assert (end.kind, end.renewable) == ("absolute", False)
            assert [r.action for r in keeper.keepalive(margin=7 * DAY)] == ["reconsent_needed"]
        assert sim.stats.refresh_calls == 0

    @pytest.mark.parametrize(("rotation", "renewable"), [("always", True), ("never", False)])
    def test_stated_lifetime(self, make_sim: Callable[..., Sim], store_url: str, rotation: str,
                             renewable: bool) -> None:  # fmt: skip
        """The provider's refresh_token_expires_in is tracked; a refresh renews it only where tokens rotate."""
        sim = make_sim(rotation=rotation, response_quirks=("refresh_token_expires_in",), refresh_token_ttl=10 * DAY)
        clock = FakeClock()
        with keeper_for(sim, store_url, clock, rotation=RotationMode(rotation)) as keeper:
            keeper.refresh("g", force=True)
            clock.advance(5 * DAY)
            [end] = keeper.expiring(7 * DAY)
        assert (end.kind, end.renewable, end.deadline) == ("stated", renewable, clock.now() + 5 * DAY)

    def test_dead_grants_are_not_reported(self, make_sim: Callable[..., Sim]) -> None:
        sim = make_sim()
        clock = FakeClock()
        with keeper_for(sim, "memory://", clock, refresh_idle_ttl=DAY) as keeper:
            sim.revoke_family(keeper.store.get_grant("g").refresh_token.reveal())  # type: ignore[union-attr]
            [result] = keeper.keepalive(margin=2 * DAY)
            assert result.action == "failed"
            assert keeper.store.get_grant("g").state is GrantState.NEEDS_REAUTH
            assert keeper.expiring(2 * DAY) == []

    @pytest.mark.anyio
    async def test_async_keeper_reports_the_same(self, make_sim: Callable[..., Sim], tmp_path: Path) -> None:
        from grantkeeper import AsyncKeeper

        sim = make_sim()
        clock = FakeClock()
        url = f"sqlite://{tmp_path}/s.db"
        keeper_for(sim, url, clock, refresh_idle_ttl=3 * DAY).close()

        async with await AsyncKeeper.open(url, clock=clock, policy=FAST_POLICY) as keeper:
            [end] = await keeper.expiring(7 * DAY)
        assert (end.kind, end.deadline) == ("idle", clock.now() + 3 * DAY)


class TestStatus:
    def test_status_shows_issue_use_and_ends(self, make_sim: Callable[..., Sim], store_url: str) -> None:
        sim = make_sim()
        clock = FakeClock()
        with keeper_for(sim, store_url, clock, refresh_idle_ttl=60 * DAY, refresh_absolute_ttl=365 * DAY) as keeper:
            clock.advance(DAY)
            keeper.refresh("g", force=True)
            status = keeper.status("g")
        assert (status.refresh_issued_at, status.refresh_used_at) == (clock.now(), clock.now())
        assert [(e.kind, e.deadline, e.renewable) for e in status.refresh_ends] == [
            ("idle", clock.now() + 60 * DAY, True), ("absolute", clock.now() - DAY + 365 * DAY, False)]  # fmt: skip
        assert status.as_dict()["refresh_ends"][0] == {"kind": "idle", "deadline": clock.now() + 60 * DAY,
                                                       "renewable": True}  # fmt: skip


class TestProviderPersistence:
    def test_new_fields_round_trip(self, store_url: str) -> None:
        provider = Provider(
            name="p", token_url="https://as.example.com/token", client_id="c",
            auth_method=AuthMethod.PRIVATE_KEY_JWT, private_key_file=key_file("ec"), key_id="k1",
            jwt_audience="https://as.example.com", send_scope=True, profile="okta",
        )  # fmt: skip
        with Keeper.open(store_url) as keeper:
            keeper.add_provider(provider)
            assert keeper.store.get_provider("p") == provider


def _v1_store(path: Path, monkeypatch: pytest.MonkeyPatch, sim: Sim) -> str:
    """A real version-1 SQLite store (created by this code with only migration 1), holding a provider and grant."""
    url = f"sqlite://{path}"
    with monkeypatch.context() as patch:
        first = migrations("sqlite")[:1]
        patch.setattr(sqlite_module, "migrations", lambda _backend: first)
        patch.setattr(sqlite_module, "latest_version", lambda _backend: 1)
        store = open_store(url)
        try:
            assert store.schema_version() == 1
            columns = {r[1] for r in store._conn().execute("PRAGMA table_info(grants)")}  # type: ignore[attr-defined]
            assert "refresh_issued_at" not in columns
            store._conn().execute(  # type: ignore[attr-defined]
                "INSERT INTO providers (name, token_url, client_id, client_secret, client_secret_env, auth_method, "
                "rotation, reuse_grace, skew, default_expires_in, created_at, updated_at) "
                "VALUES ('sim', ?, ?, NULL, 'SIM_SECRET', 'client_secret_basic', 'always', 0, 30, 3600, 1, 1)",
                (sim.url, sim.client_id),
            )
        finally:
            store.close()
    return url


class TestMigration:
    def test_version_1_store_migrates_forward(self, make_sim: Callable[..., Sim], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
        sim = make_sim()
        url = _v1_store(tmp_path / "old.db", monkeypatch, sim)
        with pytest.raises(StoreFormatError, match="grantkeeper migrate"):
            open_store(url)
        out = subprocess.run([sys.executable, "-m", "grantkeeper", "--store", url, "migrate"], capture_output=True,
                             text=True, timeout=60, check=False, env=dict(os.environ))  # fmt: skip
        assert out.returncode == 0, out.stderr
        monkeypatch.setenv("SIM_SECRET", sim.client_secret)
        with Keeper.open(url, policy=FAST_POLICY) as keeper:
            provider = keeper.store.get_provider("sim")
            assert (provider.send_scope, provider.profile, provider.private_key_file) == (False, None, None)
            keeper.import_grant("g", provider="sim", refresh_token=sim.issue_grant())
            assert keeper.refresh("g", force=True).refresh_issued_at is not None


def cli(store_url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "grantkeeper", "--store", store_url, *args], capture_output=True,
                          text=True, timeout=120, check=False, env={**os.environ, **(env or {})})  # fmt: skip


class TestCommands:
    def setup_store(self, sim: Sim, tmp_path: Path, *ttl: str) -> str:
        url = f"sqlite://{tmp_path}/gk.db"
        added = cli(url, "provider", "add", "sim", "--token-url", sim.url, "--client-id", sim.client_id,
                    "--client-secret-env", "SIM_SECRET", *ttl)  # fmt: skip
        assert added.returncode == 0, added.stderr
        imported = subprocess.run([sys.executable, "-m", "grantkeeper", "--store", url, "grant", "import", "g",
                                   "--provider", "sim"], input=sim.issue_grant(), capture_output=True, text=True,
                                  timeout=60, check=False)  # fmt: skip
        assert imported.returncode == 0, imported.stderr
        return url

    def test_status_expiring_and_refresh_due(self, make_sim: Callable[..., Sim], tmp_path: Path) -> None:
        sim = make_sim()
        url = self.setup_store(sim, tmp_path, "--refresh-idle-ttl", "3600")
        env = {"SIM_SECRET": sim.client_secret}
        assert "no refresh token or consent ends" in cli(url, "status", "--expiring", "10m").stdout
        detail = cli(url, "status", "g").stdout
        assert "refresh issued" in detail and "idle lifetime, a refresh renews it" in detail
        report = cli(url, "status", "--expiring", "2h", "--json")
        assert report.returncode == 0, report.stderr
        [end] = json.loads(report.stdout)
        assert (end["grant"], end["kind"], end["renewable"]) == ("g", "idle", True)
        due = cli(url, "refresh", "--due", "--window", "2h", env=env)
        assert due.returncode == 0, due.stderr
        assert "g: refreshed" in due.stdout
        assert sim.stats.successes == 1
        assert sim.client_secret not in due.stdout + due.stderr

    def test_consent_ending_exits_for_attention(self, make_sim: Callable[..., Sim], tmp_path: Path) -> None:
        sim = make_sim()
        url = self.setup_store(sim, tmp_path, "--refresh-absolute-ttl", "3600")
        report = cli(url, "status", "--expiring", "1d")
        assert report.returncode == 12
        assert "re-consent needed" in report.stdout
        due = cli(url, "refresh", "--due", "--window", "1d")
        assert due.returncode == 12 and "reconsent_needed" in due.stdout
        assert sim.stats.refresh_calls == 0

    @pytest.mark.parametrize("args", [("refresh",), ("refresh", "g", "--due"), ("status", "--expiring", "soon")])
    def test_usage_errors(self, make_sim: Callable[..., Sim], tmp_path: Path, args: tuple[str, ...]) -> None:
        sim = make_sim()
        url = self.setup_store(sim, tmp_path)
        assert cli(url, *args).returncode == 2
