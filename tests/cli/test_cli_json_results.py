"""``--json`` on the commands that store or remove one grant: `grant import`, `grant revoke`, `grant remove` and
`connect`. stdout is one JSON object with names and fingerprints (never a token), and `--json` never prompts.
CliWorld checks every output for every secret it has seen."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner

from grantkeeper import Keeper
from grantkeeper.cli.main import cli
from grantkeeper.testing.simulator import ProviderSimulator
from tests.cli.test_cli import GRANT, CliWorld, ready, world
from tests.helpers import provider_for
from tests.terminal import environment, spawn

__all__ = ["ready", "world"]  # fixtures, shared with tests/cli/test_cli.py

RECORD = {"name", "provider", "generation", "scopes", "refresh_fp", "access_fp", "expires_at"}


def _names(world: CliWorld) -> list[str]:
    return [g["name"] for g in json.loads(world.run("grant", "list", "--json").stdout)]


def test_grant_import_json(world: CliWorld) -> None:
    world.add_provider()
    refresh = world.sim.issue_grant()  # type: ignore[attr-defined]
    world.watch(refresh)
    first = world.run("grant", "import", "h", "--provider", "sim", "--scope", "read write", "--json",
                      stdin=refresh + "\n")  # fmt: skip
    assert first.code == 0, first.stderr
    data = json.loads(first.stdout)
    assert set(data) == RECORD | {"replaced"}
    assert (data["name"], data["provider"], data["generation"], data["scopes"], data["replaced"]) == (
        "h", "sim", 1, ["read", "write"], False)  # fmt: skip
    assert data["refresh_fp"].startswith("fp_") and data["access_fp"] is None
    again = world.run("grant", "import", "h", "--provider", "sim", "--replace", "--json", stdin=refresh + "\n")
    assert json.loads(again.stdout)["replaced"] is True and json.loads(again.stdout)["generation"] == 2


def test_grant_revoke_local_only_json(ready: CliWorld) -> None:
    out = ready.run("grant", "revoke", GRANT, "--local-only", "--json")
    assert out.code == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) == RECORD | {"revoked_at_provider", "removed"}
    assert (data["name"], data["revoked_at_provider"], data["removed"]) == (GRANT, False, True)
    assert _names(ready) == []


def test_grant_remove_json_needs_yes_and_never_asks(ready: CliWorld) -> None:
    """Even on a terminal, --json without --yes refuses (exit 3) instead of asking; with --yes it removes and
    reports the grant."""
    terminal = spawn("grant", "remove", GRANT, "--json", env=environment(ready.url))
    try:
        terminal.expect("error[configuration]")
        status = terminal.finish()
    finally:
        terminal.close()
    assert status == 3 and "[y/N]" not in terminal.transcript and "--yes" in terminal.transcript
    assert _names(ready) == [GRANT]
    out = ready.run("grant", "remove", GRANT, "--yes", "--json")
    assert out.code == 0, out.stderr
    assert json.loads(out.stdout)["removed"] is True and json.loads(out.stdout)["name"] == GRANT
    assert _names(ready) == []


def test_connect_json(tmp_path: Path, make_sim: Callable[..., ProviderSimulator],
                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The device flow's URL and code go to stderr; stdout is only the JSON of the stored grant, which holds the
    access token that came with the consent (by fingerprint)."""
    sim = make_sim(device_interval=1)
    url = f"sqlite://{tmp_path}/connect.db"
    provider = dataclasses.replace(provider_for(sim), device_authorization_url=sim.device_authorization_url)
    with Keeper.open(url) as keeper:
        keeper.add_provider(provider)

    def browser(target: str) -> bool:  # the person approves the code the opened page carries
        sim.approve(parse_qs(urlsplit(target).query)["user_code"][0])
        return True

    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr("webbrowser.open", browser)
    out = CliRunner().invoke(cli, ["--store", url, "connect", "d", "--provider", "sim", "--device", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert set(data) == RECORD | {"replaced"}
    assert data["name"] == "d" and data["replaced"] is False and data["access_fp"].startswith("fp_")
    assert "code: " in out.stderr
    for token in sim.issued_tokens():
        assert token not in out.stdout + out.stderr
