"""Shell completion: the scripts, and grant and provider names completed by the real console script.

The shell runs ``grantkeeper`` with ``_GRANTKEEPER_COMPLETE`` and the words typed so far; these tests do the
same in a subprocess against a real SQLite store. Completion must never create a store, prompt, print an
error or a secret, and must answer nothing (exit 0) when the store cannot be read.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.test_cli import CliWorld, world

__all__ = ["world"]  # the fixture, shared with tests/cli/test_cli.py

SCRIPT = Path(sys.executable).with_name("grantkeeper")


@pytest.fixture
def two_grants(world: CliWorld) -> CliWorld:
    world.add_provider()
    world.import_grant("alice")
    world.import_grant("bob")
    return world


def _complete(words: str, kind: str = "bash", **env: str) -> subprocess.CompletedProcess[str]:
    """What the real console script answers the shell for `words` (the cursor after the last word)."""
    full = {**os.environ, **env, "_GRANTKEEPER_COMPLETE": f"{kind}_complete", "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}  # fmt: skip
    assert SCRIPT.exists(), f"the console script is not installed beside {sys.executable}"
    return subprocess.run([str(SCRIPT)], env=full, capture_output=True, text=True, timeout=120, check=False,
                          stdin=subprocess.DEVNULL)  # fmt: skip


def _values(proc: subprocess.CompletedProcess[str], kind: str = "bash") -> list[str]:
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line]  # no candidates: one empty line
    if kind == "bash":  # "type,value" per line
        return [line.split(",", 1)[1] for line in lines]
    return lines[1::3]  # zsh: type, value, help per candidate


class TestNames:
    @pytest.mark.parametrize("command", ["token", "status", "refresh", "doctor", "history", "grant show",
                                         "grant remove"])  # fmt: skip
    def test_grant_arguments_complete_to_the_store_s_grants(self, two_grants: CliWorld, command: str) -> None:
        """Every command taking a grant NAME offers the store's grant names."""
        proc = _complete(f"grantkeeper --store {two_grants.url} {command} ")
        assert _values(proc) == ["alice", "bob"]

    def test_a_prefix_narrows_the_names(self, two_grants: CliWorld) -> None:
        proc = _complete(f"grantkeeper --store {two_grants.url} token b")
        assert _values(proc) == ["bob"]

    def test_zsh_gets_the_same_names(self, two_grants: CliWorld) -> None:
        proc = _complete(f"grantkeeper --store {two_grants.url} status ", kind="zsh")
        assert _values(proc, "zsh") == ["alice", "bob"]

    def test_the_store_comes_from_the_environment_too(self, two_grants: CliWorld) -> None:
        """Without --store on the command line, $GRANTKEEPER_STORE is read, as every command does."""
        proc = _complete("grantkeeper token a", GRANTKEEPER_STORE=two_grants.url)
        assert _values(proc) == ["alice"]

    @pytest.mark.parametrize("command", ["grant import carol", "connect carol"])
    def test_provider_options_complete_to_provider_names(self, two_grants: CliWorld, command: str) -> None:
        proc = _complete(f"grantkeeper --store {two_grants.url} {command} --provider ")
        assert _values(proc) == ["sim"]

    def test_export_grant_option_completes(self, two_grants: CliWorld) -> None:
        proc = _complete(f"grantkeeper --store {two_grants.url} export out.gkb --grant a")
        assert _values(proc) == ["alice"]

    def test_commands_complete_too(self) -> None:
        proc = _complete("grantkeeper comp")
        assert _values(proc) == ["completion"]

    def test_names_need_no_key_and_show_no_secret(self, two_grants: CliWorld) -> None:
        """Listing names reads no key: with the key file gone, names still complete, and nothing printed holds
        a token or the client secret."""
        key = Path(str(two_grants.path) + ".key")
        key.rename(key.with_suffix(".moved"))
        proc = _complete(f"grantkeeper --store {two_grants.url} token ")
        assert _values(proc) == ["alice", "bob"]
        for secret in two_grants.secrets:
            assert secret not in proc.stdout


class TestNoStore:
    def test_a_missing_store_completes_nothing_and_is_not_created(self, tmp_path: Path) -> None:
        path = tmp_path / "absent" / "store.db"
        proc = _complete(f"grantkeeper --store sqlite://{path} token ")
        assert _values(proc) == []
        assert not path.exists() and not path.parent.exists()

    def test_a_damaged_store_completes_nothing_quietly(self, tmp_path: Path) -> None:
        path = tmp_path / "junk.db"
        path.write_bytes(b"not a database" * 100)
        proc = _complete(f"grantkeeper --store sqlite://{path} token ")
        assert _values(proc) == []
        assert path.read_bytes() == b"not a database" * 100

    def test_an_unparseable_store_url_completes_nothing_quietly(self) -> None:
        proc = _complete("grantkeeper --store nonsense://x token ")
        assert _values(proc) == []


class TestScripts:
    @pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
    def test_completion_prints_the_script(self, shell: str) -> None:
        """`grantkeeper completion SHELL` prints a script that calls back with _GRANTKEEPER_COMPLETE."""
        proc = subprocess.run([str(SCRIPT), "completion", shell], capture_output=True, text=True, timeout=120,
                              check=False)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert f"_GRANTKEEPER_COMPLETE={shell}_complete" in proc.stdout
        assert "grantkeeper" in proc.stdout

    def test_an_unknown_shell_is_a_usage_error(self) -> None:
        proc = subprocess.run([str(SCRIPT), "completion", "tcsh"], capture_output=True, text=True, timeout=120,
                              check=False)  # fmt: skip
        assert proc.returncode == 2
        assert "bash" in proc.stderr and "zsh" in proc.stderr and "fish" in proc.stderr

    def test_bash_script_loads_and_completes_in_a_real_bash(self, two_grants: CliWorld) -> None:
        """The bash script, sourced in bash, fills COMPREPLY with the grant names (bash passes the command
        name as $1, as `complete -F` does)."""
        script = subprocess.run([str(SCRIPT), "completion", "bash"], capture_output=True, text=True, timeout=120,
                                check=True).stdout  # fmt: skip
        driver = (f"{script}\nCOMP_WORDS=(grantkeeper --store {two_grants.url} token '')\nCOMP_CWORD=4\n"
                  "_grantkeeper_completion grantkeeper\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")  # fmt: skip
        env = {**os.environ, "PATH": f"{SCRIPT.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", driver], capture_output=True, text=True,
                              timeout=120, check=False, env=env)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["alice", "bob"]
