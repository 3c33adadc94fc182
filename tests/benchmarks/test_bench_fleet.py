"""benchmarks.bench_fleet's pieces, small: the steady-state load plans what the scheduler plans, and each part's
report adds up (refreshes counted by the scheduler, the simulator and the store's generations agree). Never times."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from benchmarks._common import Report
from benchmarks.bench_scale import KEY, RECOVERY_ENV, _environ

from benchmarks import bench_fleet
from grantkeeper.keys import KEY_ENV, Crypto, parse_key
from grantkeeper.model import Grant, GrantState
from grantkeeper.protocol.planning import next_action


@pytest.fixture
def bench_env(tmp_path: Path) -> Iterator[Path]:
    with _environ(**{KEY_ENV: KEY, RECOVERY_ENV: str(tmp_path / "recovery")}):
        yield tmp_path


def _noop(message: str) -> None:
    del message


@pytest.mark.parametrize("ttl", [bench_fleet.HOUR, bench_fleet.SHORT_TTL])
def test_loaded_rows_are_planned_where_the_scheduler_plans_them(ttl: float) -> None:
    tokens = tuple(f"token-{i}" for i in range(50))
    spec = bench_fleet.RowSpec("g-", 0, 50, 50, 1_000_000.0, 1_000_100.0, ttl, tokens)
    rows = bench_fleet.make_rows(KEY, spec)
    crypto = Crypto(parse_key(KEY, origin="test"))
    planned = []
    for i, row in enumerate(rows):
        values = dict(zip(bench_fleet.COLUMNS, row, strict=True))
        assert values["refresh_fp"] == crypto.fingerprint(tokens[i]) and values["hot"] is True
        grant = Grant(values["name"], values["provider"], None, values["refresh_fp"], None, values["access_fp"],
                      values["expires_at"], (), 1, GrantState.ACTIVE, updated_at=values["updated_at"],
                      refreshed_at=values["refreshed_at"], created_at=values["created_at"])  # fmt: skip
        plan = next_action(grant, bench_fleet.PLAN_PROVIDER, hot=True, skew=bench_fleet.PLAN_PROVIDER.skew)
        assert plan is not None and plan.at == pytest.approx(values["next_due_at"], abs=1e-6)
        assert values["expires_at"] - values["updated_at"] == pytest.approx(ttl)
        planned.append(plan.at)
    assert planned == sorted(planned) and planned[0] > 1_000_000.0 and planned[-1] < 1_000_100.0
    assert planned[1] - planned[0] == pytest.approx(2.0, abs=1e-6)  # evenly spread: 100 s over 50 grants


def test_lag_histogram_quantiles() -> None:
    buckets = [0] * len(bench_fleet.LAG_BUCKETS)
    buckets[0], buckets[3], buckets[-1] = 90, 9, 1
    assert bench_fleet.bucket_quantile(buckets, 0.5) == "<= 0.1 s"
    assert bench_fleet.bucket_quantile(buckets, 0.99) == "<= 2 s"
    assert bench_fleet.bucket_quantile(buckets, 1.0) == "> 300 s"
    assert bench_fleet.bucket_quantile([0] * len(buckets), 0.5) == "n/a"


@pytest.mark.slow
def test_million_piece_counts_add_up(bench_env: Path) -> None:
    result = bench_fleet.million(bench_env, 1800, 8.0, _noop)  # 4 of 1,800 grants due in an 8 s window
    run = result.run
    assert result.due == 4
    assert run.refreshed == result.due == result.sim_stats["successes"]
    assert run.started == len(run.past_end) == sum(run.outcomes.values())
    assert result.generations == {2: result.due} and result.bulk_generations == {1: 1796}
    assert run.missed == 0 and run.late == 0 and result.sim_stats["errors"] == {}
    assert sum(run.lag_buckets) == run.started and run.cpu > 0 and run.wall >= 8.0
    report = Report(bench_fleet.NAME, "")
    bench_fleet._report_million(report, result)
    assert [row.measured.split(":")[0] for row in report.rows] == [
        "SQLite, 1,800 grants, 1 h tokens", "  the scheduler process's CPU seconds / wall seconds",
    ]  # fmt: skip
    assert report.rows[0].a == report.rows[0].b == 4 and report.rows[0].passed


@pytest.mark.slow
def test_short_token_steps_stop_at_the_first_that_fails(bench_env: Path) -> None:
    steps = bench_fleet.short_tokens(bench_env, (200, 400), 5.0, _noop)
    assert [s.grants for s in steps] == ([200, 400] if steps[0].fresh else [200])
    for step in steps:
        assert step.run.started == sum(step.run.outcomes.values()) > 0
        assert step.run.refreshed <= step.run.started
    report = Report(bench_fleet.NAME, "")
    bench_fleet._report_short(report, steps)
    table = [note for note in report.notes if note.startswith("2: ") and note[3:].strip()[:1].isdigit()]
    assert len(table) == len(steps)


@pytest.mark.slow
@pytest.mark.postgres
def test_scale_out_refreshes_every_grant_once(bench_env: Path, pg_url: str) -> None:
    result = bench_fleet.scale_out(pg_url, 40, 1, _noop)
    assert [len(result.runs[1]), len(result.runs[2])] == [1, 2]
    for count in (1, 2):
        assert sum(run.refreshed for run in result.runs[count]) == 40
        assert len(result.rates[count]) == 1 and result.rates[count][0] > 0
    assert result.sim_stats["successes"] == 80 and result.sim_stats["reuse_detections"] == 0
    report = Report(bench_fleet.NAME, "")
    bench_fleet._report_scale_out(report, result, 40)
    (row,) = report.rows
    assert row.target == "(reported)" and row.ratio == pytest.approx(row.a / row.b)
