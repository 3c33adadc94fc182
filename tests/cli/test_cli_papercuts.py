"""First-use papercuts of the command line: a mistyped grant or provider name gets the closest names, `status
--expiring` says "in 3d" instead of a count of seconds, bundle import's warning is worded for import, and
`token --header` feeds `curl -H @-` so the access token never sits in a command line (`ps` shows those to
every user). The curl test runs the curl installed here against the simulator's resource endpoint over real
HTTP."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.test_cli import GRANT, CliWorld, ready, world

__all__ = ["ready", "world"]  # fixtures, shared with tests/cli/test_cli.py

DAY = 86400


class TestSuggestions:
    def test_unknown_grant_names_the_closest(self, ready: CliWorld) -> None:
        """`token`, `status`, `doctor` and `refresh` on a near miss suggest the grant that exists (difflib)."""
        ready.import_grant("acme-prod")
        for args in (("token", "acme-prd"), ("status", "acme-prd"), ("doctor", "acme-prd"), ("refresh", "acme-prd")):
            out = ready.run(*args)
            assert out.code == 3, (args, out.stderr)
            assert out.stderr.startswith("grantkeeper: error[unknown_grant]: no grant named 'acme-prd'"), out.stderr
            assert "(did you mean 'acme-prod'?)" in out.stderr, (args, out.stderr)

    def test_unknown_provider_names_the_closest(self, ready: CliWorld) -> None:
        out = ready.run("grant", "import", "new", "--provider", "sm", stdin="x\n")
        assert out.code == 3
        assert out.stderr.startswith("grantkeeper: error[unknown_provider]: no provider named 'sm'"), out.stderr
        assert "(did you mean 'sim'?)" in out.stderr

    def test_nothing_close_suggests_nothing(self, ready: CliWorld) -> None:
        out = ready.run("token", "zzzzzz")
        assert out.code == 3
        assert "did you mean" not in out.stderr


def test_status_expiring_says_how_long_in_days(world: CliWorld) -> None:
    """Through a pipe the end is the ISO time and "(in 3d)", not "(259200 s left)"."""
    sim = world.sim
    world.watch(sim.client_secret)  # type: ignore[attr-defined]
    added = world.invoke("provider", "add", "sim", "--token-url", sim.url, "--client-id", sim.client_id,  # type: ignore[attr-defined]
                         "--client-secret-stdin", "--refresh-absolute-ttl", str(3 * DAY),
                         stdin=sim.client_secret + "\n")  # type: ignore[attr-defined]  # fmt: skip
    assert added.code == 0, added.stderr
    world.import_grant()
    out = world.run("status", "--expiring", "7d")
    assert out.code == 12, out.stderr  # a consent ends within the window
    row = out.stdout.splitlines()[1]
    assert re.fullmatch(r"g\s+sim\s+absolute\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(in 3d\)\s+re-consent needed", row), row


def test_bundle_import_warning_is_worded_for_import(ready: CliWorld, tmp_path: Path) -> None:
    """Export keeps its note ("the bundle holds the same refresh tokens this store uses"); import says the grants
    it just imported share their tokens with the store they came from."""
    bundle = tmp_path / "grants.gkb"
    exported = ready.run("export", str(bundle), "--passphrase-stdin", stdin="correct horse battery\n")
    assert exported.code == 0, exported.stderr
    assert "the bundle holds the same refresh tokens this store uses" in exported.stderr
    other = f"sqlite://{tmp_path}/other.db"
    imported = subprocess.run([sys.executable, "-m", "grantkeeper", "--store", other, "import", str(bundle),
                               "--passphrase-stdin"], input="correct horse battery\n", capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    assert "the grants just imported hold the same refresh tokens as the store they were exported from" in (
        imported.stderr
    )
    assert "this store uses" not in imported.stderr


class TestTokenHeader:
    def test_header_line(self, ready: CliWorld) -> None:
        """`token --header` prints one header line and nothing else; `token` alone is unchanged."""
        plain = ready.run("token", GRANT, token=True)
        header = subprocess.run([sys.executable, "-m", "grantkeeper", "--store", ready.url, "token", GRANT, "--header"],
                                capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert (header.returncode, header.stderr) == (0, "")
        assert header.stdout == f"Authorization: Bearer {plain.stdout.strip()}\n"
        assert not any(secret in header.stdout for secret in ready.unprintable)

    @pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
    def test_curl_reads_the_header_from_stdin(self, ready: CliWorld) -> None:
        """The README's pipeline, run for real: curl -H @- reads the header line from the pipe and the
        simulator's resource endpoint accepts the token. The control: the same curl without the pipe is 401."""
        resource = ready.sim.base_url + "/resource"  # type: ignore[attr-defined]
        grantkeeper = f"{sys.executable} -m grantkeeper --store {ready.url}"
        curl = f"curl -sS -o /dev/null -w '%{{http_code}}' -H @- {resource}"
        piped = subprocess.run(["bash", "-o", "pipefail", "-c", f"{grantkeeper} token {GRANT} --header | {curl}"],
                               capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        assert (piped.returncode, piped.stdout) == (0, "200"), piped.stderr
        control = subprocess.run(["bash", "-c", f"true | {curl}"], capture_output=True, text=True, timeout=60,
                                 check=False)  # fmt: skip
        assert control.stdout == "401", control.stderr
