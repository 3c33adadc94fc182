"""``--verbose`` shows what grantkeeper does, never a token: even with every logger (httpx, httpcore) at DEBUG.

The CLI runs in a subprocess whose root logger is configured at DEBUG on stderr before the CLI starts, the way
an application embedding it, or a curious user, might; then everything on stdout and stderr is checked
against every token the simulator issued and the client secret.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.cli.test_cli import CliWorld, world
from tests.cli.test_cli_progress import due

__all__ = ["due", "world"]  # the fixtures, shared with tests/cli/test_cli.py and tests/cli/test_cli_progress.py

GRANT = "a"  # one of `due`'s grants, whose refresh tokens die after an hour idle

DEBUG_CLI = """
import logging, sys
logging.basicConfig(level=logging.DEBUG)  # every logger, httpx and httpcore included, to stderr
from grantkeeper.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    "args",
    [("refresh", GRANT, "--force"), ("status",), ("status", GRANT), ("keepalive", "--margin", "2h"),
     ("refresh", "--due", "--window", "2h"), ("history", GRANT), ("doctor", GRANT)],
)  # fmt: skip
def test_verbose_with_debug_logs_shows_no_token(due: CliWorld, args: tuple[str, ...]) -> None:
    """-v with DEBUG logging everywhere: requests are logged (the logs are really on), tokens are not."""
    assert due.invoke("refresh", GRANT, "--force").code == 0  # an access token and a rotated refresh token
    proc = subprocess.run([sys.executable, "-c", DEBUG_CLI, "-v", "--store", due.url, *args], capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    if args[0] in ("refresh", "keepalive"):
        assert "httpx" in proc.stderr or "httpcore" in proc.stderr  # the DEBUG logs really were on
    issued = due.sim.issued_tokens()  # type: ignore[attr-defined]
    assert len(issued) >= 3
    for secret in issued | {due.sim.client_secret}:  # type: ignore[attr-defined]
        assert secret not in proc.stdout
        assert secret not in proc.stderr
