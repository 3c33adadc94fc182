"""The refresh scheduler inside `grantkeeper serve` and alone as `grantkeeper schedule`: a grant whose token the
service hands out is kept fresh ahead of time (by the scheduler's tasks, never by a caller's request), its heartbeat
is part of ``/readyz``, its counters are in ``/metrics``; a bad ``[scheduler]`` section is refused before start;
the CLI marks grants hot and shows the plan; SIGTERM stops the scheduler after its refreshes in flight."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grantkeeper.stores import open_store
from tests.helpers import setup_grant
from tests.serve.conftest import ServeProcess, make_key, metric_sample

Start = Callable[..., ServeProcess]
LIFE = 6.0


def _attempts(url: str, grant: str) -> list[Any]:
    store = open_store(url)
    try:
        return store.list_attempts(grant, limit=100)[::-1]
    finally:
        store.close()


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "grantkeeper", "--store", url, *args], capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip


def test_a_used_grant_is_refreshed_ahead_by_the_scheduler(serve_store: str, make_sim: Callable[..., Any],
                                                          serve_process: Start) -> None:  # fmt: skip
    sim = make_sim(access_ttl=LIFE)
    setup_grant(serve_store, sim, grant="acme-1", skew=0.5)
    key = make_key(serve_store, "k", grants="acme-1", scopes="token,metrics")
    server = serve_process(serve_store)
    with server.client(key) as http:
        generations = set()
        for _ in range(int(3 * LIFE / 0.25)):  # three token lifetimes of callers asking four times a second
            answer = http.get("/v1/grants/acme-1/token")
            assert answer.status_code == 200, answer.text
            generations.add(answer.json()["generation"])
            time.sleep(0.25)
        ready = http.get("/readyz").json()
        metrics = http.get("/metrics").text
    attempts = _attempts(serve_store, "acme-1")
    assert len(generations) >= 3  # fresh tokens kept coming
    # the first token was the first caller's to get (the grant was not hot yet); every later one the scheduler's
    assert len(attempts) >= 3 and all("grantkeeper-schedule" in a.actor for a in attempts[1:]), attempts
    assert len({a.generation for a in attempts}) == len(attempts)  # one refresh per generation
    assert ready["checks"]["scheduler"]["ok"] is True, ready
    assert metric_sample(metrics, "grantkeeper_scheduled_refreshes_total", outcome="refreshed") >= 2
    assert metric_sample(metrics, "grantkeeper_schedule_missed_total") == 0
    assert sim.stats.errors == {}


def test_a_bad_scheduler_section_is_refused_and_a_disabled_one_has_no_check(
    serve_store: str, make_sim: Callable[..., Any], serve_process: Start, tmp_path: Path
) -> None:
    sim = make_sim()
    setup_grant(serve_store, sim, grant="acme-1")
    bad = tmp_path / "bad.toml"
    bad.write_text("[scheduler]\nconcurrency = 0\n")
    refused = _cli(serve_store, "serve", "--port", "0", "--config", str(bad))
    assert refused.returncode != 0 and "[scheduler]" in refused.stderr and "concurrency" in refused.stderr
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[scheduler]\nleed_fraction = 0.5\n")
    refused = _cli(serve_store, "serve", "--port", "0", "--config", str(unknown))
    assert refused.returncode != 0 and "leed_fraction" in refused.stderr and "lead_fraction" in refused.stderr
    off = tmp_path / "off.toml"
    off.write_text("[scheduler]\nenabled = false\n")
    server = serve_process(serve_store, "--config", str(off))
    with server.client() as http:
        checks = http.get("/readyz").json()["checks"]
    assert "scheduler" not in checks and checks["store"]["ok"] is True


def test_the_cli_marks_grants_hot_shows_the_plan_and_schedules_alone(
    serve_store: str, make_sim: Callable[..., Any]
) -> None:
    sim = make_sim(access_ttl=LIFE)
    setup_grant(serve_store, sim, grant="hot-1", skew=0.5)
    setup_grant(serve_store, sim, grant="idle-1", skew=0.5)
    marked = _cli(serve_store, "grant", "set", "hot-1", "--hot")
    assert marked.returncode == 0 and "hot" in marked.stdout, marked.stderr
    missing = _cli(serve_store, "grant", "set", "nobody", "--hot")
    assert missing.returncode != 0 and "nobody" in missing.stderr
    plan = {p["grant"]: p for p in json.loads(_cli(serve_store, "status", "--due", "--json").stdout)}
    assert plan["hot-1"]["hot"] is True and plan["hot-1"]["action"] == "refresh_ahead"
    assert plan["idle-1"]["hot"] is False and plan["idle-1"]["action"] is None
    table = _cli(serve_store, "status", "--due")
    assert "hot-1" in table.stdout and "refresh_ahead" in table.stdout
    scheduler = subprocess.Popen([sys.executable, "-m", "grantkeeper", "--store", serve_store, "schedule"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while len(_attempts(serve_store, "hot-1")) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        os.kill(scheduler.pid, signal.SIGTERM)
        _, log = scheduler.communicate(timeout=60)
    assert scheduler.returncode == 0, log
    assert '"stopped"' in log
    hot = _attempts(serve_store, "hot-1")
    assert len(hot) >= 3 and all(a.state.value == "committed" for a in hot)
    assert _attempts(serve_store, "idle-1") == []  # not used, not hot, no lifetime end: left alone
    assert sim.stats.errors == {}
