"""Run the benchmarks and print their tables and a summary.

    python -m benchmarks.run                      # the default set: cached, refresh, processes (about a minute)
    python -m benchmarks.run cached refresh       # only these
    python -m benchmarks.run scale                # 1,000,000 grants in SQLite and PostgreSQL (slow; not default)
    python -m benchmarks.run scale --grants 200000   # the scale benchmark at another size
    python -m benchmarks.run peers                # vs Authlib and requests-oauthlib; writes benchmarks/results/
    python -m benchmarks.run serve                # the serve proxy vs a direct GET, over uvicorn (about a minute)
    python -m benchmarks.run recovery             # first token after a SIGKILL mid-refresh (SQLite, PostgreSQL)
    python -m benchmarks.run pgrefresh            # PostgreSQL round trips per refresh, pipelined vs not
    python -m benchmarks.run schedule             # group commit vs one at a time vs bare commits (SQLite, PostgreSQL)
    python -m benchmarks.run console              # the console's grants list at 100,000 grants vs 100 (~20 s)
    python -m benchmarks.run fleet                # the scheduler: 1,000,000 grants, 60 s tokens, 2 vs 1 on PG (~9 min)
    python -m benchmarks.run logging              # an INFO line through serve's redacting logging vs unredacted
    python -m benchmarks.run --all                # the default set and the slow ones
    python -m benchmarks.run --quick              # fewer rounds: a smoke check, not a measurement
    python -m benchmarks.run --json               # JSON summary on stdout (the tables go to stderr)
    python -m benchmarks.run refresh --profile    # also cProfile the keeper's refresh

A FAIL is information, not an error: the exit status is 0 whenever every benchmark ran, 1 if one crashed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import (
    bench_cached,
    bench_console,
    bench_fleet,
    bench_logging,
    bench_peers,
    bench_pgrefresh,
    bench_processes,
    bench_recovery,
    bench_refresh,
    bench_scale,
    bench_schedule,
    bench_serve,
)
from benchmarks._common import Report, environment, print_report, render_table

BENCHMARKS: dict[str, Callable[[argparse.Namespace], Report]] = {
    bench_cached.NAME: lambda args: bench_cached.run(args.quick),
    bench_refresh.NAME: lambda args: bench_refresh.run(args.quick, with_profile=args.profile),
    bench_processes.NAME: lambda args: bench_processes.run(args.quick),
    bench_scale.NAME: lambda args: bench_scale.run(args.quick, grants=args.grants),
    bench_peers.NAME: lambda args: bench_peers.run(args.quick, results=args.results),
    bench_serve.NAME: lambda args: bench_serve.run(args.quick),
    bench_recovery.NAME: lambda args: bench_recovery.run(args.quick),
    bench_pgrefresh.NAME: lambda args: bench_pgrefresh.run(args.quick),
    bench_schedule.NAME: lambda args: bench_schedule.run(args.quick),
    bench_console.NAME: lambda args: bench_console.run(args.quick),
    bench_fleet.NAME: lambda args: bench_fleet.run(args.quick, grants=args.grants),
    bench_logging.NAME: lambda args: bench_logging.run(args.quick),
}
#: Run only when named or with --all: they take minutes.
SLOW = frozenset(
    {
        bench_scale.NAME,
        bench_peers.NAME,
        bench_serve.NAME,
        bench_recovery.NAME,
        bench_pgrefresh.NAME,
        bench_schedule.NAME,
        bench_console.NAME,
        bench_fleet.NAME,
        bench_logging.NAME,
    }
)
DEFAULT = [name for name in BENCHMARKS if name not in SLOW]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: {', '.join(DEFAULT)})",
    )
    parser.add_argument(
        "--all", action="store_true", help=f"run every benchmark, the slow ones too ({', '.join(sorted(SLOW))})"
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds and a shorter run, for a smoke check")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout; tables go to stderr")
    parser.add_argument("--profile", action="store_true", help="cProfile the keeper's refresh (refresh benchmark)")
    parser.add_argument(
        "--grants",
        type=int,
        default=None,
        metavar="N",
        help=f"scale benchmark: grants per store (default {bench_scale.DEFAULT_GRANTS:,}; "
        f"{bench_scale.QUICK_GRANTS:,} with --quick)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        metavar="DIR",
        help="peers benchmark: where to write peers.md/.json/.png (default benchmarks/results; none with --quick)",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    if args.all and args.names:
        parser.error("name benchmarks or give --all, not both")
    names = list(BENCHMARKS) if args.all else list(dict.fromkeys(args.names)) or DEFAULT
    out = sys.stderr if args.json else sys.stdout

    env = environment()
    print(
        f"grantkeeper benchmarks: Python {env['python']} on {env['platform']}, {env['cpus']} CPUs, "
        f"load average {env['loadavg']}{', QUICK (smoke check, not a measurement)' if args.quick else ''}",
        file=out,
    )
    started = time.perf_counter()
    reports: list[Report] = []
    crashed: dict[str, str] = {}
    for name in names:
        try:
            report = BENCHMARKS[name](args)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            crashed[name] = f"{type(exc).__name__}: {exc}"
            print(f"\n== {name}: CRASHED: {crashed[name]}", file=out)
            continue
        reports.append(report)
        print_report(report, out)
    seconds = time.perf_counter() - started

    rows = [row for report in reports for row in report.rows]
    print(f"\n== summary ({seconds:.1f} s; ratios are A/B measured side by side in this run)", file=out)
    if rows:
        print(render_table(rows, with_bench=True), file=out)
    for name, error in crashed.items():
        print(f"{name}: CRASHED ({error})", file=out)
    passed = sum(row.passed for row in rows)
    print(f"{passed} of {len(rows)} targets met" + (f"; {len(crashed)} benchmark(s) crashed" if crashed else ""),
          file=out)  # fmt: skip
    out.flush()

    if args.json:
        summary: dict[str, Any] = {
            "environment": env,
            "quick": args.quick,
            "seconds": round(seconds, 2),
            "results": [row.as_dict() for row in rows],
            "notes": {report.name: report.notes for report in reports},
            "crashed": crashed,
        }
        json.dump(summary, sys.stdout, indent=2)
        print()
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
