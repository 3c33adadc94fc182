"""Run commands whose file access obeys file modes, even when the tests run as root.

Root bypasses modes through two capabilities, CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH: a store directory with
mode 000 stops nobody. Switching to another user is no way out here (the interpreter may live under a
directory only root can enter), so the child stays root but loses both capabilities from its bounding set
(``setpriv``, util-linux): after exec it is root without the power to ignore modes, and a mode-000 file or
directory refuses it as it would refuse any owner. `require_modes_enforced` proves that before a test relies
on it; there is no skip: a test that cannot check the real behaviour fails.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest

__all__ = ["GRANTKEEPER", "obeying_modes", "require_modes_enforced", "run_obeying_modes"]

#: The console script installed next to the interpreter running the tests.
GRANTKEEPER = Path(sys.executable).with_name("grantkeeper")
_DROPPED = "-dac_override,-dac_read_search"


def obeying_modes(argv: Sequence[str]) -> list[str]:
    """`argv`, prefixed so that it runs without the capabilities that bypass file modes (when root)."""
    if os.geteuid() != 0:
        return list(argv)
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("running as root without setpriv (util-linux): cannot run a child that obeys file modes")
    return [setpriv, f"--bounding-set={_DROPPED}", "--", *argv]


def run_obeying_modes(argv: Sequence[str], **options: object) -> subprocess.CompletedProcess[str]:
    require_modes_enforced()
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        obeying_modes(argv), capture_output=True, text=True, timeout=120, check=False, **options
    )


@functools.cache
def require_modes_enforced() -> None:
    """Fail (never skip) unless a child started by `obeying_modes` is refused by a mode-000 file."""
    with tempfile.TemporaryDirectory() as scratch:
        probe = Path(scratch) / "probe"
        probe.write_text("readable only with a capability that bypasses modes")
        probe.chmod(0)
        done = subprocess.run(
            obeying_modes([sys.executable, "-c", f"open({str(probe)!r}).read()"]),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    if done.returncode == 0 or "PermissionError" not in done.stderr:
        pytest.fail(f"a child meant to obey file modes read a mode-000 file: {done.stderr[-300:]}")
