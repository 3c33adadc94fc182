"""grantkeeper keepalive: refresh ahead of idle expiry, flag consents that end soon, exit 12 on attention."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from grantkeeper.cli.main import cli

Sim = Callable[..., object]


def _setup(tmp_path: Path, sim: object, *ttl_options: str) -> list[str]:
    store = ["--store", f"sqlite://{tmp_path}/s.db"]
    runner = CliRunner()
    added = runner.invoke(
        cli,
        [*store, "provider", "add", "sim", "--token-url", sim.url, "--client-id", sim.client_id,  # type: ignore[attr-defined]
         "--client-secret-stdin", *ttl_options],
        input=sim.client_secret + "\n",  # type: ignore[attr-defined]
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    imported = runner.invoke(cli, [*store, "grant", "import", "g", "--provider", "sim"], input=sim.issue_grant())  # type: ignore[attr-defined]
    assert imported.exit_code == 0, imported.output
    return store


def test_keepalive_refreshes_grant_near_idle_expiry(tmp_path: Path, make_sim: Sim) -> None:
    """A grant inside the idle-expiry margin is refreshed and the command exits 0."""
    sim = make_sim()
    store = _setup(tmp_path, sim, "--refresh-idle-ttl", "3600")
    result = CliRunner().invoke(cli, [*store, "keepalive", "--margin", "7200", "--json"])
    assert result.exit_code == 0, result.output
    assert [(r["grant"], r["action"]) for r in json.loads(result.stdout)] == [("g", "refreshed")]
    assert sim.stats.refresh_calls == 1  # type: ignore[attr-defined]


def test_keepalive_flags_consent_ending_soon(tmp_path: Path, make_sim: Sim) -> None:
    """A consent inside its absolute-lifetime margin is reported (exit 12) and not refreshed."""
    sim = make_sim()
    store = _setup(tmp_path, sim, "--refresh-absolute-ttl", "3600")
    result = CliRunner().invoke(cli, [*store, "keepalive", "--margin", "7200"])
    assert result.exit_code == 12
    assert "g: reconsent_needed" in result.stdout
    assert sim.stats.refresh_calls == 0  # type: ignore[attr-defined]


def test_keepalive_with_nothing_due(tmp_path: Path, make_sim: Sim) -> None:
    """Grants far from any expiry are left alone; exit 0."""
    sim = make_sim()
    store = _setup(tmp_path, sim, "--refresh-idle-ttl", "864000")
    result = CliRunner().invoke(cli, [*store, "keepalive"])
    assert result.exit_code == 0
    assert "no grant needs" in result.stdout
    assert sim.stats.refresh_calls == 0  # type: ignore[attr-defined]
