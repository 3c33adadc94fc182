"""grantkeeper vs the libraries people use instead: Authlib and requests-oauthlib, same scenarios, one run.

    python -m benchmarks.run peers                   # the full run; writes benchmarks/results/peers.{md,json,png}
    python -m benchmarks.run peers --quick --results DIR   # a smoke run (well under a minute), written to DIR

Scenarios (each in its own module under `benchmarks/peers/`, which says exactly what it does):
hot path (`hotpath`), contention (`contention`), crashes (`crashes`), store cost (`storecost`), memory
(`memory`). The libraries' configurations are in `benchmarks/peers/*_lib.py` and in the output.

Every library runs against `grantkeeper.testing.ProviderSimulator` with rotation and reuse detection. The
table compares libraries; the rows this returns to `benchmarks.run` are grantkeeper's own targets.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks._common import Report, Row, print_report

if TYPE_CHECKING:
    from benchmarks.peers.results import Measured

NAME = "peers"
TITLE = "grantkeeper vs Authlib vs requests-oauthlib: hot path, contention, crashes, store cost, memory"
RESULTS = Path(__file__).parent / "results"
CRASH_CYCLES = 200
QUICK_CRASH_CYCLES = 4
HOT_TARGET = 3.0  # the cached benchmark's target for the same ratio


def _require_peers() -> None:
    """The peers are a benchmark-only extra: say how to get them instead of an ImportError traceback."""
    missing = [m for m in ("authlib", "requests_oauthlib", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(f"the peers benchmark needs {', '.join(missing)}: pip install -e '.[bench]'")


def measure(quick: bool, progress: bool = True) -> Measured:
    # Imported here, not at the top: `benchmarks.run` imports this module, and the default benchmarks must run
    # without the bench extra installed.
    _require_peers()
    from benchmarks.peers import LIBRARIES, contention, crashes, hotpath, memory, storecost
    from benchmarks.peers.results import Measured, machine

    started = time.perf_counter()

    def say(message: str) -> None:
        if progress:
            print(f"  [peers {time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    env = machine()
    say("hot path")
    hot = hotpath.measure(quick)
    size = contention.QUICK if quick else contention.FULL
    results = []
    for lib in LIBRARIES:
        say(f"contention: {lib}, {size.describe()}")
        results.append(contention.measure(lib, size))
    cycles = QUICK_CRASH_CYCLES if quick else CRASH_CYCLES
    crash_results = []
    for seed, lib in enumerate(LIBRARIES):
        say(f"crashes: {lib}, {cycles} SIGKILLed refresh cycles")
        crash_results.append(crashes.measure(lib, cycles, seed))
    say("store cost")
    store = storecost.measure(quick)
    grants = memory.QUICK if quick else memory.FULL
    say(f"memory: {grants:,} grants per library")
    held = memory.measure(grants)
    return Measured(
        quick=quick, hot=hot, contention=results, contention_size=size, crashes=crash_results, store=store,
        memory=held, machine=env, seconds=time.perf_counter() - started,
        loadavg_after=[round(x, 2) for x in os.getloadavg()],
    )  # fmt: skip


def rows(m: Measured) -> list[Row]:
    """grantkeeper's own targets in this comparison (the table holds the comparison itself)."""
    from benchmarks.peers import hotpath

    bare, gk = m.hot.token_only[hotpath.BARE].median, m.hot.token_only["grantkeeper"].median
    c = next(r for r in m.contention if r.library == "grantkeeper")
    k = next(r for r in m.crashes if r.library == "grantkeeper")
    return [
        Row(NAME, "hot path: access_token vs dict lookup", "keeper.access_token", gk, "dict lookup + clock", bare,
            "ns", gk / bare, f"<= {HOT_TARGET:.1f}", gk / bare <= HOT_TARGET),
        Row(NAME, "contention: provider calls per expiry", "refresh calls", c.refresh_calls, "rotations",
            c.rotations, "count", c.calls_per_expiry, "== 1.00", c.rotations > 0 and c.refresh_calls == c.rotations),
        Row(NAME, "contention: invalid_grant per refresh call", "invalid_grant", c.invalid_grant, "refresh calls",
            c.refresh_calls, "count", c.invalid_grant / max(c.refresh_calls, 1), "== 0.00", c.invalid_grant == 0),
        Row(NAME, "crashes: wrong diagnoses per grant lost", "wrong diagnoses", k.wrong_diagnoses, "grants lost",
            k.grants_lost, "count", k.wrong_diagnoses / max(k.grants_lost, 1), "== 0.00", k.wrong_diagnoses == 0),
    ]  # fmt: skip


def run(quick: bool = False, *, results: Path | None = None) -> Report:
    """Measure, print-ready as a `Report`; write the files to `results` (default: benchmarks/results for a
    full run, nowhere for a quick one, so a smoke run never overwrites the committed results)."""
    from benchmarks.peers.results import configured, notes, render, table, write

    measured = measure(quick)
    report = Report(NAME, TITLE, rows=rows(measured), seconds=measured.seconds)
    report.notes.append("the comparison (x = times the baseline in the last column):")
    report.notes += render(table(measured), markdown=False).splitlines()
    report.notes += notes(measured)
    report.notes += [f"{lib} configured: {point}" for lib, points in configured().items() for point in points]
    directory = results if results is not None else (None if quick else RESULTS)
    if directory is not None:
        report.notes += [f"written: {path}" for path in write(measured, directory)]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_peers", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not a measurement")
    parser.add_argument("--results", type=Path, default=None, help="directory for peers.md, peers.json, the PNG")
    args = parser.parse_args()
    print_report(run(args.quick, results=args.results), sys.stdout)


if __name__ == "__main__":
    main()
