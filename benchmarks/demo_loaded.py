"""The README's main command, run again and again beside CPU burners: does `grantkeeper demo` pass on a busy machine?

    python -m benchmarks.demo_loaded                    # 20 runs beside 2 burners (about 10 minutes on 2 cores)
    python -m benchmarks.demo_loaded --runs 3 --burners 0
    python -m benchmarks.demo_loaded --results benchmarks/results   # also write demo_loaded.json there

The repository is copied (without .venv, .git and caches) into a scratch folder, and there the exact main command
of the README runs through ``sh -c``, as a person would paste it:

    python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/grantkeeper demo

The first run creates the virtual environment; later runs reuse it (pip only checks). Beside it, `--burners`
processes spin the CPU for the whole series. Each run's exit status, verdict (PASS, FAIL or SLOW), the slowness
the demo reported and the wall time are printed; at the end, the counts and the spread of the durations.
This is a measurement, not a test: it takes minutes, and its exit status is 0 only if every run passed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MAIN_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/grantkeeper demo"
ROOT = Path(__file__).resolve().parents[1]
VERDICT = re.compile(r"^(PASS|FAIL|SLOW): ", re.MULTILINE)


def _burn() -> None:
    while True:
        pass


def _copy_repository(source: Path, target: Path) -> None:
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", ".mypy_cache", ".ruff_cache",
                                    ".pytest_cache", ".hypothesis", "results")  # fmt: skip
    shutil.copytree(source, target, ignore=ignore)


def _verdict(stdout: str) -> tuple[str, str]:
    """The verdict word and its whole text (the summary is wrapped to the terminal width: unwrap it)."""
    found = VERDICT.search(stdout)
    if found is None:
        return "NONE", ""
    return found.group(1), " ".join(stdout[found.start() :].split())


def _one_run(index: int, workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    proc = subprocess.run(["sh", "-c", MAIN_COMMAND], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=900, check=False)  # fmt: skip
    seconds = time.monotonic() - started
    word, verdict = _verdict(proc.stdout)
    run = {
        "run": index,
        "exit": proc.returncode,
        "verdict": word,
        "seconds": round(seconds, 1),
        "load_1min_before": round(load_before, 2),
        "verdict_text": verdict,
        "stderr_tail": proc.stderr.strip().splitlines()[-5:],
    }
    note = verdict[verdict.find("(") :] if "(" in verdict and word == "PASS" else ""
    print(f"run {index:2d}: exit {proc.returncode} {word:4s} {seconds:6.1f} s  load {load_before:5.2f}  {note}",
          flush=True)  # fmt: skip
    if word != "PASS":
        print(f"         {verdict or proc.stdout[-2000:]}", flush=True)
        for line in run["stderr_tail"]:
            print(f"         stderr: {line}", flush=True)
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.demo_loaded", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="how many times to run the main command (20)")
    parser.add_argument("--burners", type=int, default=2, help="CPU-burning processes beside it (2)")
    parser.add_argument("--repo", type=Path, default=ROOT, help="the repository to copy (this one)")
    parser.add_argument("--results", type=Path, default=None, help="a folder to write demo_loaded.json into")
    args = parser.parse_args(argv)

    env = {k: v for k, v in os.environ.items() if not k.startswith("GRANTKEEPER_") and k != "VIRTUAL_ENV"}
    mp = multiprocessing.get_context("spawn")
    burners = [mp.Process(target=_burn, name=f"burner-{i}", daemon=True) for i in range(args.burners)]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="grantkeeper-demo-loaded-") as scratch:
        workdir = Path(scratch) / "grantkeeper"
        _copy_repository(args.repo, workdir)
        print(f"{args.runs} runs of: {MAIN_COMMAND}", flush=True)
        print(f"in a copy of {args.repo}, beside {args.burners} CPU burners, on {os.cpu_count()} CPUs", flush=True)
        for burner in burners:
            burner.start()
        try:
            for index in range(1, args.runs + 1):
                runs.append(_one_run(index, workdir, env))
        finally:
            for burner in burners:
                burner.terminate()
            for burner in burners:
                burner.join(timeout=5)

    passes = sum(1 for r in runs if r["verdict"] == "PASS" and r["exit"] == 0)
    durations = [r["seconds"] for r in runs]
    later = durations[1:] or durations  # the first run also creates the virtual environment
    counted = {word: sum(1 for r in runs if r["verdict"] == word) for word in ("FAIL", "SLOW", "NONE")}
    print(f"\npassed {passes} of {len(runs)}; failed {counted['FAIL']}, slow {counted['SLOW']}, "
          f"no verdict {counted['NONE']}")  # fmt: skip
    print(f"first run (creates the venv) {durations[0]:.1f} s; the others: min {min(later):.1f} s, "
          f"median {statistics.median(later):.1f} s, max {max(later):.1f} s")  # fmt: skip
    print(f"runs that reported slowness: {sum(1 for r in runs if '(' in r['verdict_text'])}")
    if args.results is not None:
        args.results.mkdir(parents=True, exist_ok=True)
        document = {
            "command": MAIN_COMMAND,
            "burners": args.burners,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "machine": platform.platform(),
            "passed": passes,
            "runs": runs,
        }
        (args.results / "demo_loaded.json").write_text(json.dumps(document, indent=2) + "\n")
    return 0 if passes == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
