"""`grantkeeper demo`: the live proof of the invariants passes on this machine and reports honest numbers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from grantkeeper.cli.main import cli


@pytest.mark.slow
def test_demo_json_summary_passes() -> None:
    """A short multi-process demo exits 0; refresh calls equal generations advanced (> 0); no invalid_grant."""
    proc = subprocess.run(
        [sys.executable, "-m", "grantkeeper", "demo", "--seconds", "3", "--processes", "2", "--threads", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1  # one JSON object and nothing else
    summary = json.loads(lines[0])
    assert summary["passed"] is True
    assert summary["verdict"].startswith("PASS")
    assert summary["generations_advanced"] > 0
    assert summary["provider_refresh_calls"] == summary["generations_advanced"]
    assert summary["minimum_refresh_calls"] == summary["generations_advanced"]
    assert summary["final_generation"] - summary["initial_generation"] == summary["generations_advanced"]
    assert summary["invalid_grant"] == 0
    assert summary["reuse_detections"] == 0
    assert summary["resource_rejected"] == 0
    assert summary["errors"] == {}
    assert summary["token_calls"] >= summary["resource_ok"] > 0
    assert summary["workers_reported"] == 2
    assert (summary["processes"], summary["threads"]) == (2, 2)


def test_demo_rejects_bad_options() -> None:
    """Out-of-range demo options are usage errors (exit 2) and start nothing."""
    for args in (["--processes", "0"], ["--threads", "0"], ["--seconds", "0"], ["--access-ttl", "-1"]):
        result = CliRunner().invoke(cli, ["demo", *args])
        assert result.exit_code == 2, args
