"""The command line: what each command prints, its exit codes, and that no token or secret is ever shown.

Most tests run the real ``python -m grantkeeper`` in a subprocess against a loopback provider simulator and an
SQLite store in tmp_path; a few use Click's CliRunner in-process. Every command's stdout and stderr is checked
against every secret known at that moment (client secret, refresh tokens, access tokens); only ``token`` may
print an access token, on stdout.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

import grantkeeper
from grantkeeper import GrantkeeperError, Secret
from grantkeeper.cli.main import cli
from grantkeeper.stores import open_store

ROOT = Path(__file__).resolve().parents[2]
GRANT = "g"
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


@dataclass
class CliWorld:
    """A store, a simulator, and every secret that must never show up in CLI output."""

    url: str
    path: Path
    sim: object
    secrets: set[str] = field(default_factory=set)
    #: Never printed by any command, not even `token`: client secrets and refresh tokens.
    unprintable: set[str] = field(default_factory=set)
    last_imported: str | None = None

    def watch(self, secret: str, *, printable: bool = False) -> None:
        self.secrets.add(secret)
        if not printable:
            self.unprintable.add(secret)

    def _collect(self) -> None:
        """Add the store's current tokens to the watched secrets (read with the library, in this process)."""
        if not self.path.exists():
            return
        try:
            store = open_store(self.url, create=False)
        except GrantkeeperError:
            return
        try:
            for grant in store.list_grants():
                if grant.refresh_token is not None:
                    self.watch(grant.refresh_token.reveal())
                if grant.access_token is not None:
                    self.watch(grant.access_token.reveal(), printable=True)
        finally:
            store.close()

    def _check(self, result: Outcome, *, printed_token: bool) -> Outcome:
        self._collect()
        allowed = result.stdout.strip() if printed_token else None
        assert allowed not in self.unprintable
        for secret in self.secrets:
            assert secret not in result.stderr
            if secret != allowed:
                assert secret not in result.stdout
        return result

    def run(self, *args: str, stdin: str = "", env: dict[str, str] | None = None, token: bool = False) -> Outcome:
        """``python -m grantkeeper --store URL ARGS`` in a subprocess."""
        self._collect()
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "grantkeeper", "--store", self.url, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=full_env,
            timeout=120,
            check=False,
        )
        return self._check(Outcome(proc.returncode, proc.stdout, proc.stderr), printed_token=token)

    def invoke(self, *args: str, stdin: str = "", env: dict[str, str] | None = None, token: bool = False) -> Outcome:
        """The same, in-process through Click's CliRunner."""
        self._collect()
        result = CliRunner().invoke(cli, ["--store", self.url, *args], input=stdin, env=env)
        return self._check(Outcome(result.exit_code, result.stdout, result.stderr), printed_token=token)

    def add_provider(self, *, secret: str | None = None) -> Outcome:
        chosen = secret if secret is not None else self.sim.client_secret  # type: ignore[attr-defined]
        self.watch(chosen)
        out = self.invoke(
            "provider", "add", "sim", "--token-url", self.sim.url, "--client-id", self.sim.client_id,  # type: ignore[attr-defined]
            "--client-secret-stdin", stdin=chosen + "\n",
        )  # fmt: skip
        assert out.code == 0, out.stderr
        return out

    def import_grant(self, name: str = GRANT) -> str:
        refresh = self.sim.issue_grant()  # type: ignore[attr-defined]
        self.watch(refresh)
        out = self.invoke("grant", "import", name, "--provider", "sim", stdin=refresh + "\n")
        assert out.code == 0, out.stderr
        self.last_imported = str(refresh)
        return str(refresh)

    def generation(self, name: str = GRANT) -> int:
        store = open_store(self.url, create=False)
        try:
            return store.get_grant(name).generation
        finally:
            store.close()


@pytest.fixture
def world(tmp_path: Path, make_sim: Callable[..., object]) -> CliWorld:
    sim = make_sim(access_ttl=3600.0)
    w = CliWorld(url=f"sqlite://{tmp_path}/cli.db", path=tmp_path / "cli.db", sim=sim)
    w.watch(sim.client_secret)  # type: ignore[attr-defined]
    return w


@pytest.fixture
def ready(world: CliWorld) -> CliWorld:
    """A world with provider "sim" (secret stored) and grant "g" imported."""
    world.add_provider()
    world.import_grant()
    return world


def _error_line(out: Outcome, code: str) -> None:
    assert out.stderr.startswith(f"grantkeeper: error[{code}]: "), out.stderr
    assert "Traceback" not in out.stderr


# ------------------------------------------------------------------------------------------------ provider


class TestProvider:
    def test_add_with_secret_on_stdin_stores_it_encrypted(self, world: CliWorld) -> None:
        """--client-secret-stdin stores the secret (encrypted) and the confirmation line never shows it."""
        out = world.add_provider()
        assert out.stdout.startswith("provider sim added: ")
        assert len(out.stdout.splitlines()) == 1
        assert "stored (encrypted)" in out.stdout
        store = open_store(world.url, create=False)
        try:
            stored = store.get_provider("sim")
        finally:
            store.close()
        assert stored.client_secret == Secret(world.sim.client_secret)  # type: ignore[attr-defined]
        assert stored.client_secret_env is None
        assert world.path.exists()
        assert world.sim.client_secret.encode() not in world.path.read_bytes()  # type: ignore[attr-defined]

    def test_add_with_secret_env_stores_only_the_variable_name(self, world: CliWorld) -> None:
        """--client-secret-env stores the variable's name; refreshes read it from the environment."""
        secret = world.sim.client_secret  # type: ignore[attr-defined]
        out = world.run(
            "provider", "add", "sim", "--token-url", world.sim.url, "--client-id", world.sim.client_id,  # type: ignore[attr-defined]
            "--client-secret-env", "GK_TEST_CLIENT_SECRET",
        )  # fmt: skip
        assert out.code == 0, out.stderr
        assert "$GK_TEST_CLIENT_SECRET" in out.stdout
        listed = json.loads(world.run("provider", "list", "--json").stdout)
        assert listed[0]["client_secret_env"] == "GK_TEST_CLIENT_SECRET"
        assert listed[0]["client_secret_stored"] is False
        world.import_grant()
        with_env = world.run("token", GRANT, env={"GK_TEST_CLIENT_SECRET": secret}, token=True)
        assert with_env.code == 0, with_env.stderr

    def test_missing_env_secret_is_a_configuration_error(self, world: CliWorld) -> None:
        """A provider whose secret variable is unset fails with exit 3 naming the variable, before sending."""
        world.run(
            "provider", "add", "sim", "--token-url", world.sim.url, "--client-id", world.sim.client_id,  # type: ignore[attr-defined]
            "--client-secret-env", "GK_TEST_UNSET_SECRET",
        )  # fmt: skip
        world.import_grant()
        out = world.run("token", GRANT, env={"GK_TEST_UNSET_SECRET": ""})
        assert out.code == 3
        _error_line(out, "configuration")
        assert "GK_TEST_UNSET_SECRET" in out.stderr
        assert world.sim.stats.refresh_calls == 0  # type: ignore[attr-defined]

    def test_adding_again_updates_and_keeps_the_secret(self, world: CliWorld) -> None:
        """Re-adding a provider updates the options given and keeps the stored secret when none is given."""
        world.add_provider()
        out = world.invoke(
            "provider", "add", "sim", "--token-url", world.sim.url, "--client-id", world.sim.client_id,  # type: ignore[attr-defined]
            "--skew", "5",
        )  # fmt: skip
        assert out.code == 0, out.stderr
        assert out.stdout.startswith("provider sim updated: ")
        listed = json.loads(world.invoke("provider", "list", "--json").stdout)
        assert listed == [
            {
                "name": "sim", "token_url": world.sim.url, "client_id": world.sim.client_id,  # type: ignore[attr-defined]
                "client_secret_stored": True, "client_secret_env": None, "auth_method": "client_secret_basic",
                "rotation": "always", "reuse_grace": 0.0, "skew": 5.0, "default_expires_in": 3600.0,
                "refresh_idle_ttl": None, "refresh_absolute_ttl": None, "private_key_file": None, "key_id": None,
                "jwt_audience": None, "send_scope": False, "profile": None, "authorization_url": None,
                "revocation_url": None, "device_authorization_url": None, "authorize_params": {},
                "api_base_url": None, "ca_bundle": None, "proxy": None, "insecure_http": False,
            }
        ]  # fmt: skip

    def test_list_shows_whether_a_secret_is_stored(self, world: CliWorld) -> None:
        """The provider table says a secret is stored, never what it is."""
        world.add_provider()
        out = world.run("provider", "list")
        assert out.code == 0
        assert out.stdout.splitlines()[0].split()[:2] == ["NAME", "TOKEN"]
        assert "stored (encrypted)" in out.stdout

    def test_both_secret_options_is_a_usage_error(self, world: CliWorld) -> None:
        """--client-secret-env together with --client-secret-stdin is refused with exit 2."""
        out = world.invoke(
            "provider", "add", "sim", "--token-url", world.sim.url, "--client-id", "c",  # type: ignore[attr-defined]
            "--client-secret-env", "X", "--client-secret-stdin", stdin="s\n",
        )  # fmt: skip
        assert out.code == 2

    def test_invalid_provider_settings_exit_3(self, world: CliWorld) -> None:
        """Settings the Provider model rejects (plain http off loopback) are a configuration error."""
        out = world.invoke("provider", "add", "p", "--token-url", "http://as.example/token", "--client-id", "c")
        assert out.code == 3
        _error_line(out, "configuration")


# --------------------------------------------------------------------------------------------------- grant


class TestGrantImport:
    def test_import_reads_the_token_from_stdin(self, world: CliWorld) -> None:
        """grant import reads stdin and prints name, generation and fingerprint, never the token."""
        world.add_provider()
        refresh = world.sim.issue_grant(scope="read write")  # type: ignore[attr-defined]
        world.watch(refresh)
        out = world.run("grant", "import", GRANT, "--provider", "sim", "--scope", "read", stdin=f"  {refresh}  \n")
        assert out.code == 0, out.stderr
        store = open_store(world.url, create=False)
        try:
            grant = store.get_grant(GRANT)
        finally:
            store.close()
        assert grant.refresh_token == Secret(refresh)
        assert grant.scopes == ("read",)
        assert out.stdout == f"grant {GRANT} imported: provider sim, generation 1, refresh token {grant.refresh_fp}\n"

    def test_reimport_advances_generation(self, ready: CliWorld) -> None:
        """Importing over an existing grant needs --replace (else exit 3, nothing read or stored); with it the
        re-import (re-consent) says so and the generation only goes up."""
        before = ready.generation()
        refresh = ready.sim.issue_grant()  # type: ignore[attr-defined]
        ready.watch(refresh)
        refused = ready.invoke("grant", "import", GRANT, "--provider", "sim", stdin=refresh)
        assert refused.code == 3
        assert "already exists" in refused.stderr and "--replace" in refused.stderr
        assert ready.generation() == before
        out = ready.invoke("grant", "import", GRANT, "--provider", "sim", "--replace", stdin=refresh)
        assert out.code == 0
        assert "re-imported" in out.stdout
        assert ready.generation() == before + 1

    def test_empty_stdin_is_an_error(self, world: CliWorld) -> None:
        """An empty refresh token is refused with exit 3 and nothing is stored."""
        world.add_provider()
        out = world.run("grant", "import", GRANT, "--provider", "sim", stdin="  \n")
        assert out.code == 3
        _error_line(out, "configuration")
        assert "grant import" in world.run("status").stdout  # the "no grants" hint

    def test_unknown_provider_exit_3(self, world: CliWorld) -> None:
        """Importing for a provider that does not exist fails with unknown_provider."""
        world.add_provider()
        out = world.invoke("grant", "import", GRANT, "--provider", "nope", stdin="tok\n")
        assert out.code == 3
        _error_line(out, "unknown_provider")


# ---------------------------------------------------------------------------------------- token, refresh


class TestToken:
    def test_token_prints_exactly_one_working_line(self, ready: CliWorld) -> None:
        """`token` prints one line, the access token, and the resource server accepts it."""
        out = ready.run("token", GRANT, token=True)
        assert out.code == 0, out.stderr
        assert out.stderr == ""
        lines = out.stdout.splitlines()
        assert len(lines) == 1
        assert out.stdout == lines[0] + "\n"
        response = httpx.get(ready.sim.base_url + "/resource", headers={"Authorization": f"Bearer {lines[0]}"})  # type: ignore[attr-defined]
        assert response.status_code == 200
        assert ready.sim.stats.refresh_calls == 1  # type: ignore[attr-defined]

    def test_token_in_process_reuses_the_stored_token(self, ready: CliWorld) -> None:
        """A second `token` serves the stored access token without another provider call."""
        first = ready.invoke("token", GRANT, token=True)
        second = ready.invoke("token", GRANT, token=True)
        assert first.code == second.code == 0
        assert first.stdout == second.stdout
        assert len(first.stdout.splitlines()) == 1
        assert ready.sim.stats.refresh_calls == 1  # type: ignore[attr-defined]

    def test_concurrent_token_processes_refresh_once(self, ready: CliWorld) -> None:
        """Six `grantkeeper token` processes on an expired grant all succeed with one provider refresh call."""
        assert ready.run("token", GRANT, token=True).code == 0
        # Expire the stored access token, as if its lifetime had passed.
        raw = sqlite3.connect(ready.path)
        raw.execute("UPDATE grants SET expires_at = expires_at - 7200 WHERE name = ?", (GRANT,))
        raw.commit()
        raw.close()
        assert json.loads(ready.run("status", GRANT, "--json").stdout)["access_valid"] is False
        ready.sim.reset_stats()  # type: ignore[attr-defined]
        generation = ready.generation()
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "grantkeeper", "--store", ready.url, "token", GRANT],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(6)
        ]
        results = [(*p.communicate(timeout=120), p.returncode) for p in procs]
        for stdout, stderr, code in results:
            assert code == 0, stderr
            assert stderr == ""
            assert len(stdout.splitlines()) == 1
        assert len({stdout for stdout, _, _ in results}) == 1
        assert ready.sim.stats.refresh_calls == 1  # type: ignore[attr-defined]
        assert ready.generation() == generation + 1
        token = results[0][0].strip()
        assert token not in ready.unprintable
        ready.watch(token, printable=True)
        response = httpx.get(ready.sim.base_url + "/resource", headers={"Authorization": f"Bearer {token}"})  # type: ignore[attr-defined]
        assert response.status_code == 200
        for secret in ready.secrets - {token}:
            assert all(secret not in stdout + stderr for stdout, stderr, _ in results)


class TestRefresh:
    def test_refresh_and_force(self, ready: CliWorld) -> None:
        """refresh refreshes when needed, not when the token is usable, and always with --force."""
        first = ready.run("refresh", GRANT)
        assert first.code == 0, first.stderr
        assert first.stdout.startswith(f"grant {GRANT} refreshed: generation 1 -> 2\n")
        second = ready.run("refresh", GRANT)
        assert second.code == 0
        assert "not refreshed" in second.stdout
        forced = ready.run("refresh", GRANT, "--force")
        assert forced.code == 0
        assert forced.stdout.startswith(f"grant {GRANT} refreshed: generation 2 -> 3\n")
        assert ready.generation() == 3
        assert ready.sim.stats.refresh_calls == 2  # type: ignore[attr-defined]

    def test_refresh_prints_fingerprints_and_expiry(self, ready: CliWorld) -> None:
        """The refresh report shows both fingerprints and the expiry in ISO 8601 UTC with seconds left."""
        out = ready.run("refresh", GRANT, "--force")
        store = open_store(ready.url, create=False)
        try:
            grant = store.get_grant(GRANT)
        finally:
            store.close()
        assert grant.refresh_fp is not None
        assert grant.access_fp is not None
        assert grant.refresh_fp in out.stdout
        assert grant.access_fp in out.stdout
        assert ISO_UTC.search(out.stdout)
        assert re.search(r"\(\d+ s left\)", out.stdout)


# -------------------------------------------------------------------------------------------------- status


class TestStatus:
    def test_status_outputs_show_fingerprints_never_secrets(self, ready: CliWorld) -> None:
        """status, status NAME and both --json forms show fingerprints, attempts and lease, never a token."""
        assert ready.run("refresh", GRANT).code == 0
        store = open_store(ready.url, create=False)
        try:
            grant = store.get_grant(GRANT)
            attempts = store.list_attempts(GRANT)
        finally:
            store.close()
        table = ready.run("status")
        assert table.code == 0
        assert table.stdout.splitlines()[0].split()[:4] == ["NAME", "PROVIDER", "STATE", "GEN"]
        assert re.search(rf"^{GRANT}\s+sim\s+active\s+2\s", table.stdout, re.MULTILINE)

        detail = ready.run("status", GRANT)
        assert detail.code == 0
        assert str(grant.refresh_fp) in detail.stdout
        assert str(grant.access_fp) in detail.stdout
        assert attempts[0].refresh_fp in detail.stdout
        assert attempts[0].worker in detail.stdout
        assert "committed" in detail.stdout
        assert "lease             none" in detail.stdout

        one = json.loads(ready.run("status", GRANT, "--json").stdout)
        assert one["name"] == GRANT
        assert one["generation"] == 2
        assert one["refresh_fp"] == grant.refresh_fp
        assert one["access_fp"] == grant.access_fp
        assert one["state"] == "active"
        assert one["attempts"][0]["refresh_fp"] == attempts[0].refresh_fp
        assert set(one["attempts"][0]) >= {"id", "generation", "refresh_fp", "worker", "state", "outcome", "resend_of"}

        many = json.loads(ready.run("status", "--json").stdout)
        assert isinstance(many, list)
        assert [s["name"] for s in many] == [GRANT]

    def test_status_of_empty_store(self, world: CliWorld) -> None:
        """A store without grants says so (and --json gives an empty list)."""
        world.add_provider()
        assert "no grants" in world.invoke("status").stdout
        assert json.loads(world.invoke("status", "--json").stdout) == []


# -------------------------------------------------------------------------------------------- exit codes


class TestExitCodes:
    def test_unknown_grant(self, ready: CliWorld) -> None:
        """token, refresh and status of an unknown grant exit 3 with error[unknown_grant]."""
        for args in (("token", "nope"), ("refresh", "nope"), ("status", "nope")):
            out = ready.run(*args)
            assert out.code == 3
            _error_line(out, "unknown_grant")
            assert out.stdout == ""

    def test_needs_reauth_after_revocation(self, ready: CliWorld) -> None:
        """A family revoked at the provider makes refresh exit 5; the grant then reports needs_reauth."""
        initial = ready.last_imported
        assert initial is not None
        assert ready.run("token", GRANT, token=True).code == 0
        ready.sim.revoke_family(initial)  # type: ignore[attr-defined]
        out = ready.run("refresh", GRANT, "--force")
        assert out.code == 5
        _error_line(out, "revoked_or_expired")
        state = json.loads(ready.run("status", GRANT, "--json").stdout)
        assert state["state"] == "needs_reauth"
        again = ready.run("token", GRANT)
        assert again.code == 5
        _error_line(again, "needs_reauth")
        assert again.stdout == ""

    def test_client_auth_failed(self, world: CliWorld) -> None:
        """A wrong client secret exits 4 with client_auth_failed and leaves the grant healthy."""
        world.add_provider(secret="wrong-client-secret-" + "x" * 20)
        world.import_grant()
        out = world.run("token", GRANT)
        assert out.code == 4
        _error_line(out, "client_auth_failed")
        assert out.stdout == ""
        assert json.loads(world.run("status", GRANT, "--json").stdout)["state"] == "active"

    def test_bad_store_url(self, world: CliWorld) -> None:
        """An unsupported or empty store URL is a configuration error (exit 3)."""
        for url in ("mysql://db.example/grants", "sqlite://", "nonsense"):
            result = CliRunner().invoke(cli, ["--store", url, "status"])
            assert result.exit_code == 3
            assert result.stderr.startswith("grantkeeper: error[configuration]: ")

    def test_missing_store_is_not_created(self, tmp_path: Path) -> None:
        """Commands other than `provider add` and `migrate` do not create a store that is not there."""
        result = CliRunner().invoke(cli, ["--store", f"sqlite://{tmp_path}/absent.db", "token", GRANT])
        assert result.exit_code == 3
        assert "no grantkeeper store" in result.stderr
        assert not (tmp_path / "absent.db").exists()

    def test_foreign_sqlite_file_is_refused_untouched(self, tmp_path: Path) -> None:
        """Another application's SQLite file is refused with exit 3 and left byte-for-byte unchanged."""
        path = tmp_path / "other.db"
        other = sqlite3.connect(path)
        other.execute("CREATE TABLE customers (id INTEGER)")
        other.commit()
        other.close()
        before = path.read_bytes()
        for args in (("status",), ("token", GRANT), ("migrate",), ("provider", "list")):
            result = CliRunner().invoke(cli, ["--store", f"sqlite://{path}", *args])
            assert result.exit_code == 3, result.output
            assert result.stderr.startswith("grantkeeper: error[")
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]

    def test_foreign_sqlite_file_with_key_is_store_format(self, tmp_path: Path) -> None:
        """With a key available, a foreign SQLite file is reported as store_format ("not a grantkeeper store")."""
        path = tmp_path / "other.db"
        other = sqlite3.connect(path)
        other.execute("CREATE TABLE customers (id INTEGER)")
        other.commit()
        other.close()
        result = CliRunner().invoke(cli, ["--store", f"sqlite://{path}", "status"], env={"GRANTKEEPER_KEY": "A" * 43})
        assert result.exit_code == 3
        assert result.stderr.startswith("grantkeeper: error[store_format]: ")
        assert "not a grantkeeper store" in result.stderr

    def test_foreign_sqlite_file_without_key_is_store_format(self, tmp_path: Path) -> None:
        """Without any key, a foreign SQLite file is still reported as store_format, not as a key problem."""
        path = tmp_path / "other.db"
        other = sqlite3.connect(path)
        other.execute("CREATE TABLE customers (id INTEGER)")
        other.commit()
        other.close()
        result = CliRunner().invoke(cli, ["--store", f"sqlite://{path}", "status"])
        assert result.stderr.startswith("grantkeeper: error[store_format]: ")

    def test_usage_errors_exit_2(self, world: CliWorld) -> None:
        """Unknown commands, missing options and bad option values are usage errors (exit 2)."""
        for args in (("frobnicate",), ("grant", "import", GRANT), ("demo", "--processes", "0"), ("refresh",)):
            assert world.invoke(*args).code == 2

    def test_unexpected_error_is_one_line_without_traceback(
        self, ready: CliWorld, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A bug (non-grantkeeper exception) exits 1 with one line; the traceback appears only with -v."""
        import grantkeeper.cli.main as cli_main

        def broken(*_: object, **__: object) -> None:
            raise RuntimeError("something broke")

        monkeypatch.setattr(cli_main, "_open", broken)
        quiet = ready.invoke("status")
        assert quiet.code == 1
        assert quiet.stderr.count("\n") == 1
        assert "RuntimeError: something broke" in quiet.stderr
        assert "Traceback" not in quiet.stderr
        loud = CliRunner().invoke(cli, ["--store", ready.url, "-v", "status"])
        assert loud.exit_code == 1
        assert "Traceback" in loud.stderr

    def test_verbose_adds_evidence_to_errors(self, ready: CliWorld) -> None:
        """With -v a grantkeeper error also prints its evidence (codes and fingerprints, no token)."""
        result = CliRunner().invoke(cli, ["--store", ready.url, "-v", "token", "nope"])
        assert result.exit_code == 3
        assert '"code": "unknown_grant"' in result.stderr
        assert '"grant": "nope"' in result.stderr

    def test_logging_handler_is_removed_after_each_run(self, ready: CliWorld) -> None:
        """-v configures the grantkeeper logger only for the duration of one invocation."""
        logger = logging.getLogger("grantkeeper")
        handlers, level = list(logger.handlers), logger.level
        assert CliRunner().invoke(cli, ["--store", ready.url, "-v", "status"]).exit_code == 0
        assert (logger.handlers, logger.level) == (handlers, level)

    def test_main_returns_the_exit_code(self, ready: CliWorld) -> None:
        """main() (the console script) returns the exit status instead of raising SystemExit."""
        from grantkeeper.cli.main import main

        assert main(["--store", ready.url, "status", "nope"]) == 3
        assert main(["--version"]) == 0


# --------------------------------------------------------------------------------------------------- misc


class TestMigrate:
    def test_migrate_prints_schema_version(self, tmp_path: Path) -> None:
        """migrate opens (or creates) the store at the latest schema and prints its version."""
        from grantkeeper.stores.migrations import latest_version

        url = f"sqlite://{tmp_path}/m.db"
        for _ in range(2):  # a new store, then an existing one
            proc = subprocess.run(
                [sys.executable, "-m", "grantkeeper", "--store", url, "migrate"],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout == f"store schema version {latest_version('sqlite')} (up to date)\n"


def test_exit_code_table_in_docs_matches_the_error_tree() -> None:
    """docs/cli.md lists every GrantkeeperError subclass with its code and exit code."""
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    rows = {
        m.group(1): (m.group(2), int(m.group(3)))
        for m in re.finditer(r"^\|\s*`(\w+)`\s*\|\s*`(\w+)`\s*\|\s*(\d+)\s*\|", text, re.MULTILINE)
    }
    for name in grantkeeper.__all__:
        cls = getattr(grantkeeper, name)
        if isinstance(cls, type) and issubclass(cls, GrantkeeperError):
            assert rows.get(name) == (cls.code, cls.exit_code), name
