"""The peers benchmark's quick run completes and writes a complete, well-formed result (never timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

LIBRARIES = ("grantkeeper", "authlib", "requests-oauthlib")
ROOT = Path(__file__).resolve().parents[2]


def _count(value: object) -> int:
    assert isinstance(value, int) and not isinstance(value, bool) and value >= 0, value
    return value


@pytest.mark.slow
def test_quick_peers_run_reports_every_library(tmp_path: Path) -> None:
    # The test extra installs the bench extra, so a missing peer is an error here, never a skip.
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "peers", "--quick", "--results", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert {p.name for p in tmp_path.iterdir()} >= {"peers.md", "peers.json", "peers-contention.png"}
    data = json.loads((tmp_path / "peers.json").read_text())
    assert data["quick"] is True

    for row in data["table"]:
        assert all(row[lib] for lib in LIBRARIES), row
    contention = {c["library"]: c for c in data["contention"]["results"]}
    crashes = {c["library"]: c for c in data["crashes"]}
    memory = {m["library"]: m for m in data["memory"]}
    assert set(contention) == set(crashes) == set(LIBRARIES)
    assert set(memory) == {"dict", *LIBRARIES}
    for lib in LIBRARIES:
        for key in ("refresh_calls", "rotations", "invalid_grant", "reuse_detections", "grants_lost", "calls_served"):
            _count(contention[lib][key])
        assert all(_count(n) for n in contention[lib]["errors"].values())
        for key in ("cycles", "lost_in_flight", "grants_lost", "wrong_diagnoses", "unnoticed"):
            _count(crashes[lib][key])
        assert all(_count(n) for n in crashes[lib]["reported"].values())
        assert _count(memory[lib]["peak_kib"]) > 0
    # What grantkeeper promises, not how fast it is.
    assert contention["grantkeeper"]["invalid_grant"] == 0
    assert contention["grantkeeper"]["grants_lost"] == 0
    assert contention["grantkeeper"]["refresh_calls"] == contention["grantkeeper"]["rotations"] > 0
    assert crashes["grantkeeper"]["wrong_diagnoses"] == crashes["grantkeeper"]["unnoticed"] == 0
