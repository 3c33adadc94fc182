"""``grantkeeper demo``: prove the invariants live, on a private store against a local provider simulator.

Setup: a temporary SQLite store, a `ProviderSimulator` that rotates the refresh token on every refresh and
revokes the whole grant when a superseded token comes back (no grace), short-lived access tokens. Then several
processes with several threads each ask one shared `Keeper` per process for access tokens as fast as they can
and present them to the simulator's resource endpoint.

What the summary proves:

* provider refresh calls == generations advanced: every refresh the provider performed was committed, and no
  refresh token was sent twice (I1, I2, I3) -- a second send would also show as ``invalid_grant`` and a dead grant;
* ``invalid_grant`` == 0: no worker ever used a stale refresh token (I4);
* no resource check rejected: no access token was served past its expiry minus the skew (I4);
* no worker errors.

Workers report counts only (never tokens) through a queue; see `grantkeeper.cli.demo_worker`.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import queue as queue_module
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from grantkeeper._exceptions import GrantkeeperError
from grantkeeper._secrets import Secret
from grantkeeper.cli import demo_worker
from grantkeeper.cli._session import Session
from grantkeeper.cli.demo_worker import Counts
from grantkeeper.engine import Keeper
from grantkeeper.model import AuthMethod, Provider, RotationMode
from grantkeeper.stores import SQLStore, open_store

__all__ = ["DemoOptions", "demo", "run_demo"]

PROVIDER = "sim"
GRANT = "demo"
SETUP_TIMEOUT = 60.0  # for every worker process to start and open the store
FINISH_GRACE = 20.0  # after the deadline, for threads caught mid-refresh to finish and report
POLL = 0.25


@dataclass(frozen=True)
class DemoOptions:
    seconds: float = 10.0
    processes: int = 4
    threads: int = 4
    access_ttl: float = 1.0


@dataclass
class _Tally:
    """What the parent has heard from its workers."""

    processes: int
    ready: set[int] = field(default_factory=set)
    progress: dict[int, Counts] = field(default_factory=dict)
    done: dict[int, Counts] = field(default_factory=dict)

    def handle(self, message: tuple[str, int, dict[str, Any] | None]) -> None:
        kind, index, data = message
        if kind == "ready":
            self.ready.add(index)
        elif data is not None:
            counts = Counts(
                data["token_calls"], data["resource_ok"], data["resource_rejected"], dict(data["errors"]),
                resource_late=data["resource_late"],
            )  # fmt: skip
            (self.done if kind == "done" else self.progress)[index] = counts

    def poll(self, source: Any, timeout: float) -> None:
        """Handle every message that arrives within `timeout` (at least one wait, then drain)."""
        try:
            self.handle(source.get(timeout=timeout))
            while True:
                self.handle(source.get_nowait())
        except queue_module.Empty:
            pass

    def total(self) -> Counts:
        total = Counts()
        for index in range(self.processes):
            part = self.done.get(index) or self.progress.get(index)
            if part is not None:
                total.add(part)
        return total


def _generation(store: SQLStore, fallback: int) -> int:
    try:
        return store.get_grant(GRANT).generation
    except GrantkeeperError:
        return fallback


def _live_view(options: DemoOptions, elapsed: float, counts: Counts, refresh_calls: int, generation: int) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("elapsed", f"{min(elapsed, options.seconds):.1f} / {options.seconds:g} s")
    grid.add_row("token calls", str(counts.token_calls))
    grid.add_row("resource checks", f"{counts.resource_ok} ok, {counts.resource_rejected} rejected")
    grid.add_row("provider refresh calls", str(refresh_calls))
    grid.add_row("generation", str(generation))
    errors = ", ".join(f"{code}: {n}" for code, n in sorted(counts.errors.items())) or "none"
    grid.add_row("errors", escape(errors))
    title = f"grantkeeper demo: {options.processes} processes x {options.threads} threads"
    return Panel(grid, title=escape(title), expand=False)


def _setup(url: str, sim: Any) -> int:
    """Provider "sim" and grant "demo" in a fresh store; returns the grant's initial generation."""
    with Keeper.open(url) as keeper:
        keeper.add_provider(
            Provider(
                name=PROVIDER,
                token_url=sim.url,
                client_id=sim.client_id,
                client_secret=Secret(sim.client_secret),
                auth_method=AuthMethod.CLIENT_SECRET_BASIC,
                rotation=RotationMode.ALWAYS,
                skew=30.0,
            )
        )
        return keeper.import_grant(GRANT, provider=PROVIDER, refresh_token=sim.issue_grant()).generation


def _run_workers(
    options: DemoOptions, url: str, base_url: str, store: SQLStore, sim: Any, console: Console | None,
    verbose: bool, initial: int,
) -> tuple[_Tally, float]:  # fmt: skip
    """Start the worker processes, wait until they are ready, let them run, collect their counts."""
    mp = multiprocessing.get_context("spawn")
    messages: Any = mp.Queue()
    go = mp.Event()
    tally = _Tally(options.processes)
    processes = [
        mp.Process(
            target=demo_worker.run,
            args=(i, url, base_url, GRANT, options.threads, options.seconds, messages, go, verbose, options.access_ttl),
            name=f"grantkeeper-demo-{i}",
            daemon=True,
        )
        for i in range(options.processes)
    ]
    for process in processes:
        process.start()
    started = time.monotonic()
    finished = False
    try:
        setup_until = time.monotonic() + SETUP_TIMEOUT
        while len(tally.ready) + len(tally.done) < options.processes and time.monotonic() < setup_until:
            tally.poll(messages, 0.1)
            if not any(p.is_alive() for p in processes):
                tally.poll(messages, 0.5)
                break
        go.set()
        started = time.monotonic()
        finish_by = started + options.seconds + FINISH_GRACE
        generation = initial
        view = contextlib.nullcontext() if console is None else Live(console=console, refresh_per_second=4)
        with view as live:
            while len(tally.done) < options.processes and time.monotonic() < finish_by:
                tally.poll(messages, POLL)
                if live is not None:
                    generation = _generation(store, generation)
                    elapsed = time.monotonic() - started
                    live.update(_live_view(options, elapsed, tally.total(), sim.stats.refresh_calls, generation))
                if not any(p.is_alive() for p in processes):
                    tally.poll(messages, 0.5)  # the last messages of processes that just exited
                    break
        finished = True
    finally:
        go.set()  # never leave a worker waiting to start
        for process in processes:
            if finished:
                process.join(timeout=5.0)
            if process.is_alive():  # stuck, or we are leaving early (Ctrl-C, an error): stop it now
                process.terminate()
        for process in processes:
            process.join(timeout=5.0)
        messages.close()
    elapsed = time.monotonic() - started
    return tally, elapsed


def run_demo(options: DemoOptions, *, console: Console | None = None, verbose: bool = False) -> dict[str, Any]:
    """Run the demo and return its summary (plain data). `console` gets a live display if given."""
    from grantkeeper.testing.simulator import ProviderSimulator

    with (
        tempfile.TemporaryDirectory(prefix="grantkeeper-demo-") as tmp,
        ProviderSimulator(
            rotation="always", reuse_grace=0.0, reuse_detection=True, access_ttl=options.access_ttl
        ) as sim,
    ):
        url = f"sqlite://{tmp}/demo.db"
        initial = _setup(url, sim)
        store = open_store(url, create=False)
        try:
            tally, elapsed = _run_workers(options, url, sim.base_url, store, sim, console, verbose, initial)
            final = store.get_grant(GRANT).generation
        finally:
            store.close()
        stats = sim.stats
    return _summary(options, tally, elapsed, initial, final, stats.refresh_calls, dict(stats.errors),
                    stats.reuse_detections)  # fmt: skip


def _summary(
    options: DemoOptions, tally: _Tally, elapsed: float, initial: int, final: int, refresh_calls: int,
    provider_errors: dict[str, int], reuse_detections: int,
) -> dict[str, Any]:  # fmt: skip
    counts = Counts()
    for index in range(options.processes):
        part = tally.done.get(index)
        if part is None:
            counts.error("worker_lost")  # never reported its final counts (crashed or stuck)
            part = tally.progress.get(index)
        if part is not None:
            counts.add(part)
    advanced = final - initial
    invalid_grant = provider_errors.get("invalid_grant", 0)
    reasons = []
    if refresh_calls != advanced:
        reasons.append(
            f"{refresh_calls} provider refresh calls for {advanced} committed generations: a refresh token was sent "
            "more than once, or a refresh the provider performed was not committed"
        )
    if invalid_grant:
        reasons.append(f"the provider answered invalid_grant {invalid_grant} times (a stale or reused refresh token)")
    if counts.errors:
        reasons.append("workers saw errors: " + ", ".join(f"{c} x{n}" for c, n in sorted(counts.errors.items())))
    if counts.resource_rejected:
        reasons.append(f"{counts.resource_rejected} access tokens the keeper served were rejected by the resource")
    if counts.resource_ok == 0:
        reasons.append("no access token was ever accepted")
    passed = not reasons
    verdict = (
        f"PASS: {counts.token_calls} token calls from {options.processes * options.threads} workers in "
        f"{options.processes} processes cost {refresh_calls} provider refresh calls, one per generation; no refresh "
        "token was spent twice and every access token served was accepted"
        + (
            f" ({counts.resource_late} checks came too late to count: the machine was overloaded)"
            if counts.resource_late
            else ""
        )
        if passed
        else "FAIL: " + "; ".join(reasons)
    )
    return {
        "passed": passed,
        "verdict": verdict,
        "seconds": options.seconds,
        "processes": options.processes,
        "threads": options.threads,
        "access_ttl": options.access_ttl,
        "elapsed_seconds": round(elapsed, 3),
        "provider_refresh_calls": refresh_calls,
        "minimum_refresh_calls": advanced,
        "generations_advanced": advanced,
        "initial_generation": initial,
        "final_generation": final,
        "invalid_grant": invalid_grant,
        "reuse_detections": reuse_detections,
        "provider_errors": provider_errors,
        "token_calls": counts.token_calls,
        "resource_ok": counts.resource_ok,
        "resource_rejected": counts.resource_rejected,
        "resource_rejected_late": counts.resource_late,
        "errors": counts.errors,
        "workers_reported": len(tally.done),
    }


def _print_summary(console: Console, summary: dict[str, Any]) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(justify="right")
    grid.add_column(style="dim")
    grid.add_row("provider refresh calls", str(summary["provider_refresh_calls"]), "")
    grid.add_row(
        "minimum possible",
        str(summary["minimum_refresh_calls"]),
        f"generations advanced ({summary['initial_generation']} -> {summary['final_generation']})",
    )
    grid.add_row("invalid_grant answers", str(summary["invalid_grant"]), "must be 0")
    grid.add_row("token calls", str(summary["token_calls"]), "")
    grid.add_row("resource checks ok", str(summary["resource_ok"]), "")
    grid.add_row("resource checks rejected", str(summary["resource_rejected"]), "must be 0")
    if summary["resource_rejected_late"]:
        grid.add_row(
            "rejected, check too slow", str(summary["resource_rejected_late"]),
            "the check outlived the validity guaranteed at serving (machine overloaded)",
        )  # fmt: skip
    errors = ", ".join(f"{code}: {n}" for code, n in sorted(summary["errors"].items())) or "none"
    grid.add_row("worker errors", escape(errors), "")
    grid.add_row("final generation", str(summary["final_generation"]), "")
    console.print(grid)
    style = "bold green" if summary["passed"] else "bold red"
    console.print(escape(summary["verdict"]), style=style)


@click.command()
@click.option("--seconds", type=click.FloatRange(min=0.1), default=10.0, show_default=True, help="How long to run.")
@click.option("--processes", type=click.IntRange(1, 64), default=4, show_default=True, help="Worker processes.")
@click.option("--threads", type=click.IntRange(1, 64), default=4, show_default=True, help="Threads per process.")
@click.option(
    "--access-ttl",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Access-token lifetime at the simulator, in seconds.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object; no live display.")
@click.pass_context
def demo(ctx: click.Context, seconds: float, processes: int, threads: int, access_ttl: float, as_json: bool) -> None:
    """Prove the invariants live: many processes and threads, one rotating grant, a local provider.

    Uses a temporary store (not --store) and exits 0 only if every provider refresh call committed exactly one
    generation, no invalid_grant, no worker error and no rejected access token was seen.
    """
    session = ctx.find_object(Session)
    verbose = session.verbose if session is not None else False
    options = DemoOptions(seconds=seconds, processes=processes, threads=threads, access_ttl=access_ttl)
    console = Console(highlight=False)
    live = not as_json and sys.stdout.isatty()
    if not as_json:
        console.print(
            f"grantkeeper demo: {processes} processes x {threads} threads for {seconds:g} s; the provider rotates "
            f"the refresh token on every refresh and revokes the grant on reuse; access tokens live {access_ttl:g} s"
        )
    summary = run_demo(options, console=console if live else None, verbose=verbose)
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    else:
        _print_summary(console, summary)
    ctx.exit(0 if summary["passed"] else 1)
