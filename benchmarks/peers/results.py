"""The comparison as one table, and the files it is written to: Markdown, JSON and the contention plot.

Every cell comes from a measurement of the run being written (`Measured`); nothing here makes a number up.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks._common import environment, format_value
from benchmarks.peers import LIBRARIES, library
from benchmarks.peers.contention import Contention, Size
from benchmarks.peers.crashes import Crashes
from benchmarks.peers.hotpath import BARE, HotPath
from benchmarks.peers.memory import Memory
from benchmarks.peers.storecost import StoreCost

__all__ = ["Measured", "machine", "table", "write"]

MIB = 1024.0
DISTRIBUTIONS = ("grantkeeper", "Authlib", "requests-oauthlib", "oauthlib", "requests", "httpx", "psycopg")
SHARED = (
    "The machine is shared: other engineers' builds and tests use the same 2 cores (the load averages say how "
    "busy it was), so timings are noisy; compare libraries within this run (they ran in the same interleaved "
    "rounds or one after another), not with other runs."
)


@dataclass
class Measured:
    quick: bool
    hot: HotPath
    contention: list[Contention]
    contention_size: Size
    crashes: list[Crashes]
    store: StoreCost
    memory: list[Memory]
    machine: dict[str, Any]
    seconds: float = 0.0
    loadavg_after: list[float] = field(default_factory=list)


def machine() -> dict[str, Any]:
    """The environment of `benchmarks._common` plus what the numbers depend on here."""
    info = environment()
    info["cpu_model"] = _cpu_model()
    info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1)
    info["kernel"] = platform.release()
    info["versions"] = {name: _version(name) for name in DISTRIBUTIONS}
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


# --------------------------------------------------------------------------------------------- the table


def _times(samples: dict[str, Any], key: str) -> str:
    return f"{format_value(samples[key].median, 'ns')} ({samples[key].median / samples[BARE].median:.1f}x)"


def _rate(sample: Any) -> str:
    return f"{1e9 / sample.median:,.0f}/s"


def table(m: Measured) -> list[list[str]]:
    """Rows of [scenario, measure, grantkeeper, Authlib, requests-oauthlib, baseline or ideal]."""
    hot, size = m.hot, m.contention_size
    by_lib = {c.library: c for c in m.contention}
    crash = {c.library: c for c in m.crashes}
    mem = {r.library: r for r in m.memory}
    store = m.store.refreshes
    rows = [
        ["hot path", "token step, median per call (x bare)", *(_times(hot.token_only, lib) for lib in LIBRARIES),
         f"{format_value(hot.token_only[BARE].median, 'ns')} dict lookup + clock"],
        ["hot path", "token + request, as in contention (x bare)", *(_times(hot.per_call, lib) for lib in LIBRARIES),
         f"{format_value(hot.per_call[BARE].median, 'ns')} dict lookup + request"],
        ["contention", "provider refresh calls per expiry",
         *(f"{by_lib[lib].calls_per_expiry:.2f}" for lib in LIBRARIES), "1.00"],
        ["contention", "invalid_grant responses", *(str(by_lib[lib].invalid_grant) for lib in LIBRARIES), "0"],
        ["contention", f"grants lost (of {size.grants})", *(str(by_lib[lib].grants_lost) for lib in LIBRARIES), "0"],
        ["contention", "refresh calls / rotations", *(f"{by_lib[lib].refresh_calls} / {by_lib[lib].rotations}"
                                                     for lib in LIBRARIES), "-"],
        ["contention", "calls served", *(f"{by_lib[lib].calls_served:,}" for lib in LIBRARIES), "-"],
        ["crashes", f"grants lost (of {m.crashes[0].cycles} SIGKILLed cycles)",
         *(str(crash[lib].grants_lost) for lib in LIBRARIES), "the kills that lost the token (next row)"],
        ["crashes", "kills that lost the rotated token (truth)", *(str(crash[lib].lost_in_flight) for lib in LIBRARIES),
         "-"],
        ["crashes", "wrong diagnoses", *(str(crash[lib].wrong_diagnoses) for lib in LIBRARIES), "0"],
        ["store cost", "durable refreshes/s, SQLite (x raw commit rate)",
         *(f"{_rate(store[lib + ' sqlite'])} ({store['sqlite raw commit'].median / store[lib + ' sqlite'].median:.2f}x)"
           for lib in LIBRARIES), f"{_rate(store['sqlite raw commit'])} raw commits"],
    ]  # fmt: skip
    if "grantkeeper postgres" in store:
        pg, raw = store["grantkeeper postgres"], store["postgres raw commit"]
        rows.append(["store cost", "durable refreshes/s, PostgreSQL (x raw commit rate)",
                     f"{_rate(pg)} ({raw.median / pg.median:.2f}x)", "n/a", "n/a",
                     f"{_rate(raw)} raw commits"])  # fmt: skip
    bare = mem["dict"]
    rows.append(
        [
            "memory",
            f"peak RSS holding {bare.grants:,} grants (bytes/grant)",
            *(_memory(mem[lib]) for lib in LIBRARIES),
            f"{_memory(bare)} dict of tokens",
        ]
    )
    return rows


def _memory(r: Memory) -> str:
    return f"{r.peak_kib / MIB:,.0f} MiB ({(r.peak_kib - r.before_kib) * 1024 / r.grants:,.0f})"


def render(rows: list[list[str]], *, markdown: bool) -> str:
    header = ["scenario", "measure", *LIBRARIES, "baseline / ideal"]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------- the files


def configured() -> dict[str, list[str]]:
    return {lib: list(library(lib).configured) for lib in LIBRARIES}


def notes(m: Measured) -> list[str]:
    """What the table's cells count, and the details behind them."""
    out = [
        f"hot path: {m.hot.rounds} interleaved rounds of {m.hot.calls[0]:,} (token step) / {m.hot.calls[1]:,} "
        "(token + request) calls per case; median of per-round figures; loop overhead included for every case",
        f"contention: {m.contention_size.describe()}; a fresh simulator per library (rotation always, reuse "
        "grace 0, reuse detection on); 1 ms pause between calls per thread; calls per expiry = provider refresh "
        "calls / refresh tokens rotated",
    ]
    for c in m.contention:
        out.append(
            f"contention {c.library}: {c.refresh_calls} refresh calls, {c.rotations} rotations, {c.invalid_grant} "
            f"invalid_grant, {c.reuse_detections} reuse detections (families revoked), {c.grants_lost} grants "
            f"lost, errors raised to callers {c.errors or 'none'}, {c.calls_served:,} calls served in "
            f"{c.seconds:.1f} s"
        )
    for k in m.crashes:
        out.append(
            f"crashes {k.library}: {k.cycles} cycles, median uninterrupted refresh {k.refresh_ms:.1f} ms (kill "
            f"window 3x that); kills that lost the rotated token {k.lost_in_flight}; grants lost {k.grants_lost}; "
            f"failed recoveries reported as {k.reported or 'none'}; wrong diagnoses {k.wrong_diagnoses}; "
            f"recoveries that reported success on a dead grant {k.unnoticed}"
            + (f"; worker refreshes that failed before the kill: {k.worker_failures}" if k.worker_failures else "")
        )
    out.append(f"store cost: {m.store.rounds} interleaved rounds of {m.store.ops} refreshes per case; PostgreSQL: "
               f"{m.store.postgres}")  # fmt: skip
    for r in m.memory:
        out.append(
            f"memory {r.library}: RSS {r.before_kib / MIB:,.1f} MiB with the library imported, peak "
            f"{r.peak_kib / MIB:,.1f} MiB holding {r.grants:,} grants"
        )
    return out


def as_json(m: Measured) -> dict[str, Any]:
    return {
        "quick": m.quick,
        "seconds": round(m.seconds, 1),
        "machine": m.machine,
        "loadavg_after": m.loadavg_after,
        "shared_machine": SHARED,
        "configured": configured(),
        "table": [dict(zip(["scenario", "measure", *LIBRARIES, "baseline"], row, strict=True)) for row in table(m)],
        "hot_path_ns": {
            "token_step": {k: asdict(v) for k, v in m.hot.token_only.items()},
            "token_and_request": {k: asdict(v) for k, v in m.hot.per_call.items()},
        },
        "contention": {"size": asdict(m.contention_size), "results": [asdict(c) for c in m.contention]},
        "crashes": [asdict(c) for c in m.crashes],
        "store_cost_ns_per_op": {k: asdict(v) for k, v in m.store.refreshes.items()},
        "store_cost_postgres": m.store.postgres,
        "memory": [asdict(r) for r in m.memory],
        "notes": notes(m),
    }


def markdown(m: Measured, plot: str | None) -> str:
    env = m.machine
    lines = [
        "# grantkeeper vs Authlib vs requests-oauthlib"
        + (" (QUICK: a smoke run, not a measurement)" if m.quick else ""),
        "",
        "Written by `python -m benchmarks.run peers` (benchmarks/bench_peers.py); every figure was measured in "
        f"this run ({m.seconds:.0f} s). See benchmarks/README.md for what each scenario does.",
        "",
        f"Machine: {env['cpu_model']}, {env['cpus']} CPUs, {env['memory_gib']} GiB, {env['platform']}; Python "
        f"{env['python']}; load average {env['loadavg']} at the start, {m.loadavg_after} at the end.",
        "",
        SHARED,
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".",
        "",
        render(table(m), markdown=True),
        "",
    ]
    if plot:
        lines += [f"![refresh calls and invalid_grant over time, contention scenario]({plot})", ""]
    lines += ["## How each library was configured", ""]
    for lib, points in configured().items():
        lines.append(f"- **{lib}**")
        lines += [f"  - {point}" for point in points]
    lines += ["", "## Details", ""] + [f"- {note}" for note in notes(m)]
    return "\n".join(lines) + "\n"


def plot(m: Measured, path: Path) -> None:
    """Refresh calls per second and cumulative invalid_grant over time in the contention scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (calls_ax, errors_ax) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for c in m.contention:
        times, rates = _per_second(c.series)
        calls_ax.plot(times, rates, label=c.library)
        errors_ax.plot([t for t, _, _ in c.series], [e for _, _, e in c.series], label=c.library)
    calls_ax.set_ylabel("provider refresh calls / s\n(trailing 1 s window)")
    calls_ax.set_title(f"contention: {m.contention_size.describe()}")
    errors_ax.set_ylabel("invalid_grant responses (cumulative)")
    errors_ax.set_xlabel("seconds since start")
    for ax in (calls_ax, errors_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _per_second(series: list[tuple[float, int, int]]) -> tuple[list[float], list[float]]:
    """Refresh calls per second over a trailing window of at least one second (the tokens live 1 s, so a
    shorter window shows the expiry rhythm, not the rate)."""
    times, rates = [], []
    start = 0
    for t, calls, _ in series:
        while start + 1 < len(series) and t - series[start + 1][0] >= 1.0:
            start += 1
        t0, calls0, _ = series[start]
        if t - t0 >= 1.0:
            times.append(t)
            rates.append((calls - calls0) / (t - t0))
    return times, rates


def write(m: Measured, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    png = directory / "peers-contention.png"
    plot(m, png)
    md = directory / "peers.md"
    md.write_text(markdown(m, png.name))
    js = directory / "peers.json"
    js.write_text(json.dumps(as_json(m), indent=2) + "\n")
    return [md, js, png]
