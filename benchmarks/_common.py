"""What every benchmark shares: interleaved rounds, medians, result rows and the tables they print.

Nothing here is timed. A benchmark hands `interleave` one callable per case; each call runs
one round of that case and returns the time per operation of that round (nanoseconds). Rounds alternate
between the cases, and the order flips every round (A B, B A, A B, ...) so that neither case always runs
right after the other. Slow drift on a shared machine (another tenant, CPU frequency, page cache) then
lands on both cases alike, and the median of per-round figures ignores the rounds a burst of noise hit.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from time import perf_counter_ns
from typing import Any, TextIO

__all__ = [
    "Report",
    "Row",
    "Sample",
    "cpu_seconds",
    "environment",
    "format_value",
    "interleave",
    "print_report",
    "render_table",
    "sim_provider",
    "standalone",
    "stop_workers",
    "summarize",
]


@dataclass(frozen=True)
class Sample:
    """The per-round figures of one case, summarised."""

    median: float
    p25: float
    p75: float
    rounds: int

    def spread(self, unit: str) -> str:
        return f"median {format_value(self.median, unit)} (p25-p75 {format_value(self.p25, unit)} - " + (
            f"{format_value(self.p75, unit)}, {self.rounds} rounds)"
        )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process `pid` has used so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summarize(values: Sequence[float]) -> Sample:
    if not values:
        raise ValueError("no rounds were measured")
    if len(values) == 1:
        return Sample(values[0], values[0], values[0], 1)
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return Sample(statistics.median(values), q1, q3, len(values))


def interleave(cases: dict[str, Callable[[], float]], *, rounds: int, warmup: int) -> dict[str, Sample]:
    """Run `warmup` rounds of every case (discarded), then `rounds` interleaved rounds; median per case."""
    order = list(cases)
    for _ in range(warmup):
        for name in order:
            cases[name]()
    per_round: dict[str, list[float]] = {name: [] for name in order}
    for i in range(rounds):
        for name in order if i % 2 == 0 else reversed(order):
            per_round[name].append(cases[name]())
    return {name: summarize(values) for name, values in per_round.items()}


@dataclass
class Row:
    """One measured ratio: A (grantkeeper) over B (the bare baseline), against a target."""

    bench: str
    measured: str
    a_label: str
    a: float
    b_label: str
    b: float
    unit: str  # "ns" for a time per operation, "count" for a count
    ratio: float
    target: str  # e.g. "<= 3.0" or "== 1.00"
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["result"] = "PASS" if self.passed else "FAIL"
        return data


@dataclass
class Report:
    """What one benchmark module returns: its rows and the notes that explain them."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def format_value(value: float, unit: str) -> str:
    if unit == "count" or unit.endswith("/s"):  # a count, or a rate such as "refreshes/s"
        return f"{value:.0f}" + ("" if unit == "count" else f" {unit}")
    if unit != "ns":
        return f"{value:.3g} {unit}"
    if abs(value) < 1e3:
        return f"{value:.1f} ns"
    if abs(value) < 1e6:
        return f"{value / 1e3:.1f} us"
    if abs(value) < 1e9:
        return f"{value / 1e6:.3f} ms"
    return f"{value / 1e9:.3f} s"


def render_table(rows: Sequence[Row], *, with_bench: bool = False) -> str:
    header = (["benchmark"] if with_bench else []) + ["measured", "grantkeeper (A)", "baseline (B)", "A/B", "target",
                                                      "result"]  # fmt: skip
    lines = [header]
    for row in rows:
        a = f"{format_value(row.a, row.unit)}  {row.a_label}"
        b = f"{format_value(row.b, row.unit)}  {row.b_label}"
        cells = [row.measured, a, b, f"{row.ratio:.2f}", row.target, "PASS" if row.passed else "FAIL"]
        lines.append(([row.bench] if with_bench else []) + cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * width for width in widths))
    return "\n".join(out)


def print_report(report: Report, stream: TextIO) -> None:
    print(f"\n== {report.name}: {report.title} ({report.seconds:.1f} s)", file=stream)
    print(render_table(report.rows), file=stream)
    for note in report.notes:
        print(f"  {note}", file=stream)
    stream.flush()


def stop_workers(procs: Sequence[Any], go: Any) -> None:
    """However a run of worker processes waiting on the event `go` ended: release them and terminate any
    still alive, so no benchmark leaves processes behind."""
    go.set()
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(timeout=10)


def sim_provider(sim: Any, name: str = "sim") -> Any:
    """A grantkeeper `Provider` for a running `ProviderSimulator`, with the library's defaults otherwise."""
    from grantkeeper import Provider, Secret

    return Provider(name=name, token_url=sim.url, client_id=sim.client_id, client_secret=Secret(sim.client_secret))


def environment() -> dict[str, Any]:
    """Enough about the machine to judge the numbers (the load average says how noisy it was)."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg": load,
    }


def standalone(run: Callable[[bool], Report]) -> None:
    """``python -m benchmarks.bench_x [--quick]``: run one benchmark and print its table."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke check")
    args = parser.parse_args()
    print_report(run(args.quick), sys.stdout)


def instrumented_refreshes(keeper: Any, names: Iterator[str], refreshes: int) -> list[str]:
    """Split forced keeper refreshes into the two durable store transactions, the HTTP exchange and the rest
    (Python in between). A separate pass, after the timed rounds: the wrappers never touch measured figures."""
    from grantkeeper.tokens import transport

    store = keeper.store
    samples: dict[str, list[int]] = defaultdict(list)
    current: dict[str, int] = defaultdict(int)

    def timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = perf_counter_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                current[label] += perf_counter_ns() - t0

        return wrapper

    labels = {"claim": "claim: lease + attempt (durable tx)", "commit": "commit: generation+1 (durable tx)"}
    post = "POST + read response (transport.send)"
    for method, label in labels.items():
        setattr(store, method, timed(label, getattr(store, method)))
    original_send = transport.send
    transport.send = timed(post, original_send)  # type: ignore[assignment]
    try:
        for _ in range(refreshes):
            current.clear()
            t0 = perf_counter_ns()
            keeper.refresh(next(names), force=True)
            total = perf_counter_ns() - t0
            for label in [*labels.values(), post]:
                samples[label].append(current[label])
            samples["everything else (flow, crypto, parse, cache)"].append(total - sum(current.values()))
            samples["total (instrumented)"].append(total)
    finally:
        transport.send = original_send  # type: ignore[assignment]
        for method in labels:
            delattr(store, method)
    width = max(len(label) for label in samples)
    lines = [f"where the keeper's refresh goes (instrumented pass, {refreshes} refreshes, medians):"]
    for label, values in samples.items():
        lines.append(f"  {label.ljust(width)}  {format_value(statistics.median(values), 'ns')}")
    return lines


class BarePoster:
    """The baseline's token request: a refresh_token POST as a careful hand-written integration makes it, on
    its own grant family at the simulator, keeping the rotated refresh token in memory."""

    def __init__(self, sim: Any) -> None:
        import base64
        from urllib.parse import quote_plus

        import httpx

        from grantkeeper.keepers import DEFAULT_TIMEOUT
        from grantkeeper.tokens.request import USER_AGENT

        self.url = sim.url
        self.refresh_token = sim.issue_grant()
        pair = f"{quote_plus(sim.client_id)}:{quote_plus(sim.client_secret)}"
        self.headers = {
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
            "Authorization": "Basic " + base64.b64encode(pair.encode()).decode("ascii"),
        }
        # The keeper's default client, built the same way (grantkeeper.keepers.Keeper.__init__).
        self.http = httpx.Client(timeout=DEFAULT_TIMEOUT, follow_redirects=False, trust_env=False)

    def post(self) -> bytes:
        """Spend the current refresh token and keep its successor; returns the response body."""
        response = self.http.post(
            self.url, data={"grant_type": "refresh_token", "refresh_token": self.refresh_token}, headers=self.headers
        )
        if response.status_code != 200:
            error = response.json().get("error") if response.content.startswith(b"{") else response.status_code
            raise RuntimeError(f"baseline refresh failed: HTTP {response.status_code} {error}")
        body = response.json()
        if not body.get("access_token") or not body.get("refresh_token"):
            raise RuntimeError("baseline refresh: the simulator did not rotate the refresh token")
        self.refresh_token = body["refresh_token"]
        return response.content

    def close(self) -> None:
        self.http.close()
