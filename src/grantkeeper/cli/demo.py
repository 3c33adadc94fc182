"""``grantkeeper demo``: prove the invariants live, on a private store against a local provider simulator.

Setup: a temporary SQLite store, a `ProviderSimulator` that rotates the refresh token on every refresh and
revokes the whole grant when a superseded token comes back (no grace), short-lived access tokens. Then several
processes with several threads each ask one shared `Keeper` per process for access tokens as fast as they can
and present them to the simulator's resource endpoint.

The verdict fails only on a broken invariant, judged from the provider's counters, the store's attempt history
and the workers' counts (`_judge`):

* provider refresh calls == generations advanced == committed attempts: every refresh the provider performed was
  committed as exactly one generation and no refresh token was sent twice (I1, I2, I3);
* ``invalid_grant`` == 0 and no stale refresh token sent: no worker ever used a stale refresh token (I4);
* no access token rejected by the resource within the validity the keeper guarantees at serving (I4);
* no token or client secret in plaintext in the store, its folder or the workers' grantkeeper logs (I6);
* no worker error other than slowness: an unexpected exception or a misclassified failure is a bug (I5).

Slowness is reported, not failed: resource checks slower than the demo's client timeout, keeper calls that said
"retry later" (lease wait, provider or store too slow), 401s for checks slower than the guaranteed validity.
One kind of slowness costs the grant itself: a provider slower than the keeper's request timeout leaves the
refresh ambiguous, the keeper re-sends once as the design requires, and a provider with no reuse grace then
revokes the grant. When the history shows exactly that (every extra provider call a recorded send, every dead
attempt classified ``lost_in_flight`` or ``reuse_detected``), the verdict is SLOW (exit 6: retry on a less loaded
machine), not FAIL; so is a run that never got an access token accepted or never refreshed.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from grantkeeper._exceptions import GrantkeeperError
from grantkeeper._secrets import Secret
from grantkeeper.admin import Admin
from grantkeeper.cli import demo_worker
from grantkeeper.cli._io import json_option
from grantkeeper.cli._session import Session
from grantkeeper.cli.demo_worker import Counts, WorkerPlan
from grantkeeper.engine.ports import Store
from grantkeeper.keepers import Keeper
from grantkeeper.model import Attempt, AttemptState, AuthMethod, Provider, RotationMode

if TYPE_CHECKING:
    from grantkeeper.testing.simulator import ProviderSimulator

__all__ = ["EXIT_CODES", "DemoOptions", "demo", "run_demo"]

PROVIDER = "sim"
GRANT = "demo"
SETUP_TIMEOUT = 60.0  # for every worker process to start and open the store
POLL = 0.25
EXIT_CODES = {"pass": 0, "fail": 1, "slow": 6}  # 6: the CLI's "transient: retry later"
#: what a worker sees once the grant is dead; explained when the history shows it was lost to an ambiguous refresh
GRANT_LOST_CODES = frozenset({"needs_reauth", "lost_in_flight", "reuse_detected"})
#: the classes of a dead attempt that an ambiguous (possibly spent) earlier attempt explains
LOST_TO_AMBIGUITY = frozenset({"lost_in_flight", "reuse_detected"})
#: attempts whose request may have reached the provider without a generation being committed
SENT_UNCOMMITTED = frozenset({AttemptState.AMBIGUOUS, AttemptState.DEAD, AttemptState.REJECTED, AttemptState.OPEN,
                              AttemptState.ABANDONED})  # fmt: skip


@dataclass(frozen=True)
class DemoOptions:
    seconds: float = 10.0
    processes: int = 4
    threads: int = 4
    access_ttl: float = 1.0
    #: the workers' HTTP client timeout for one resource check; a slower check is slowness, not a failure
    resource_timeout: float = 5.0
    #: the keepers' budget for one token request. Generous: a provider slower than this leaves a refresh
    #: ambiguous, and with no reuse grace that costs the grant (a SLOW verdict), so a busy machine must not reach it
    request_timeout: float = 30.0


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
            (self.done if kind == "done" else self.progress)[index] = Counts.from_dict(data)

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


def _generation(store: Store, fallback: int) -> int:
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
    grid.add_row("errors", escape(_listing(counts.errors)))
    grid.add_row("slowness", escape(_listing(counts.slow)))
    title = f"grantkeeper demo: {options.processes} processes x {options.threads} threads"
    return Panel(grid, title=escape(title), expand=False)


def _listing(counts: dict[str, int]) -> str:
    return ", ".join(f"{code}: {n}" for code, n in sorted(counts.items())) or "none"


def _setup(url: str, sim: ProviderSimulator) -> int:
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
    options: DemoOptions, plan: WorkerPlan, store: Store, sim: ProviderSimulator, console: Console | None,
    initial: int,
) -> tuple[_Tally, float]:  # fmt: skip
    """Start the worker processes, wait until they are ready, let them run, collect their counts."""
    mp = multiprocessing.get_context("spawn")
    messages: Any = mp.Queue()
    go = mp.Event()
    tally = _Tally(options.processes)
    processes = [
        mp.Process(target=demo_worker.run, args=(i, plan, messages, go), name=f"grantkeeper-demo-{i}", daemon=True)
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
        finish_by = started + options.seconds + plan.finish_within()
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
            if process.is_alive():  # stuck past every bound, or we are leaving early (Ctrl-C, an error)
                process.terminate()
        for process in processes:
            process.join(timeout=5.0)
        messages.close()
    elapsed = time.monotonic() - started
    return tally, elapsed


def _find_leaks(folder: Path, secrets: Iterable[str]) -> list[str]:
    """The files under `folder` (store, WAL, key and recovery files, worker logs) holding any of `secrets` in
    plaintext, as paths relative to `folder`."""
    needles = [secret.encode() for secret in secrets if secret]
    leaking = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if any(needle in data for needle in needles):
            leaking.append(str(path.relative_to(folder)))
    return leaking


#: a hook for tests: called with the running simulator and the store URL before the workers start
Prepare = Callable[["ProviderSimulator", str], None]


def run_demo(
    options: DemoOptions, *, console: Console | None = None, verbose: bool = False, prepare: Prepare | None = None
) -> dict[str, Any]:
    """Run the demo and return its summary (plain data). `console` gets a live display if given."""
    from grantkeeper.testing.simulator import ProviderSimulator

    with (
        tempfile.TemporaryDirectory(prefix="grantkeeper-demo-") as tmp,
        ProviderSimulator(
            rotation="always", reuse_grace=0.0, reuse_detection=True, access_ttl=options.access_ttl
        ) as sim,
    ):
        folder = Path(tmp)
        url = f"sqlite://{tmp}/demo.db"
        initial = _setup(url, sim)
        plan = WorkerPlan(
            store_url=url, resource_url=sim.base_url + "/resource", grant=GRANT, threads=options.threads,
            seconds=options.seconds, access_ttl=options.access_ttl, resource_timeout=options.resource_timeout,
            request_timeout=options.request_timeout, log_dir=tmp, verbose=verbose,
        )  # fmt: skip
        if prepare is not None:
            prepare(sim, url)
        with Admin.open(url) as admin:  # read only: the workers refresh, this process watches
            tally, elapsed = _run_workers(options, plan, admin.store, sim, console, initial)
            final = admin.store.get_grant(GRANT).generation
            attempts = admin.store.list_attempts(GRANT, limit=2**62)
        stats = sim.stats
        leaks = _find_leaks(folder, {*sim.issued_tokens(), sim.client_secret})
    evidence = _Evidence(
        options=options, counts=_final_counts(options, tally), reported=len(tally.done), initial=initial, final=final,
        refresh_calls=stats.refresh_calls, provider_errors=dict(stats.errors), reuse_detections=stats.reuse_detections,
        attempts=attempts, leaks=leaks,
    )  # fmt: skip
    return _summary(evidence, elapsed)


def _final_counts(options: DemoOptions, tally: _Tally) -> Counts:
    counts = Counts()
    for index in range(options.processes):
        part = tally.done.get(index)
        if part is None:
            counts.error("worker_lost")  # never reported its final counts: crashed, or stuck past every bound
            part = tally.progress.get(index)
        if part is not None:
            counts.add(part)
    return counts


@dataclass(frozen=True)
class _Evidence:
    """Everything the verdict is judged from."""

    options: DemoOptions
    counts: Counts
    reported: int
    initial: int
    final: int
    refresh_calls: int
    provider_errors: dict[str, int]
    reuse_detections: int
    attempts: list[Attempt]
    leaks: list[str]


@dataclass(frozen=True)
class _Judgement:
    outcome: str  # "pass", "fail" (an invariant broke) or "slow" (none broke, but the run could not show them)
    failures: list[str]
    inconclusive: list[str]
    slowness: list[str]
    ambiguous: int


def _ids(attempts: list[Attempt]) -> str:
    return ", ".join(str(a.id) for a in sorted(attempts, key=lambda a: a.id))


@dataclass
class _Findings:
    failures: list[str] = field(default_factory=list)  # an invariant broke
    inconclusive: list[str] = field(default_factory=list)  # slowness hid what the run should show
    slowness: list[str] = field(default_factory=list)  # reported, not failures


def _judge(ev: _Evidence) -> _Judgement:
    """Fail on a broken invariant only; report slowness; call a run SLOW when slowness hid what it should show."""
    found = _Findings()
    ambiguous = [a for a in ev.attempts if a.state is AttemptState.AMBIGUOUS]
    dead = [a for a in ev.attempts if a.state is AttemptState.DEAD]
    stale = [a for a in ev.attempts if a.outcome == "stale_local_token"]
    _check_spending(ev, ambiguous, stale, found)
    lost_to_slowness = _check_loss(ev, ambiguous, dead, stale, found)
    _check_workers(ev, lost_to_slowness, found)
    _check_coverage(ev, lost_to_slowness, found)
    outcome = "fail" if found.failures else "slow" if found.inconclusive else "pass"
    return _Judgement(outcome, found.failures, found.inconclusive, found.slowness, len(ambiguous))


def _check_spending(ev: _Evidence, ambiguous: list[Attempt], stale: list[Attempt], found: _Findings) -> None:
    """Spend once (I2) and one commit per generation (I3): provider calls, recorded sends and commits agree."""
    advanced = ev.final - ev.initial
    committed = [a for a in ev.attempts if a.state in (AttemptState.COMMITTED, AttemptState.RECOVERED)]
    sent_uncommitted = [a for a in ev.attempts if a.state in SENT_UNCOMMITTED]
    extra = ev.refresh_calls - advanced
    if not ambiguous and extra != 0:
        found.failures.append(
            f"{ev.refresh_calls} provider refresh calls for {advanced} committed generations: a refresh token was "
            "sent more than once, or a refresh the provider performed was not committed"
        )
    elif ambiguous and not 0 <= extra <= len(sent_uncommitted):
        found.failures.append(
            f"{ev.refresh_calls} provider refresh calls for {advanced} committed generations and "
            f"{len(sent_uncommitted)} recorded sends that committed nothing: a refresh token was sent without a record"
        )
    if len(committed) != advanced:
        found.failures.append(f"{len(committed)} committed attempts for {advanced} generations advanced (I3)")
    if stale:
        found.failures.append(f"a stale refresh token was sent (attempts {_ids(stale)}: stale_local_token)")


def _outcomes(attempts: list[Attempt]) -> str:
    return ", ".join(sorted({str(a.outcome) for a in attempts}))


def _check_loss(
    ev: _Evidence, ambiguous: list[Attempt], dead: list[Attempt], stale: list[Attempt], found: _Findings
) -> bool:
    """Whether the grant was lost only because the provider was too slow (ambiguous sends re-sent as recorded, no
    reuse grace); any other invalid_grant or dead attempt is a failure."""
    invalid_grant = ev.provider_errors.get("invalid_grant", 0)
    if not invalid_grant and not dead:
        if ambiguous:
            found.slowness.append(
                f"{len(ambiguous)} refreshes got no answer within the {ev.options.request_timeout:g} s request "
                "timeout and were re-sent as recorded"
            )
        return False
    unexplained = [a for a in dead if a.outcome not in LOST_TO_AMBIGUITY]
    if ambiguous and not unexplained and not stale:
        found.inconclusive.append(
            f"the provider did not answer {len(ambiguous)} refresh(es) within the keeper's "
            f"{ev.options.request_timeout:g} s request timeout (attempts {_ids(ambiguous)}, ambiguous); the "
            "keeper re-sent as recorded and, the provider allowing no reuse grace, the grant was lost"
            + (f" (attempts {_ids(dead)}: " + _outcomes(dead) + ")" if dead else "")
        )
        return True
    found.failures.append(
        f"the provider answered invalid_grant {invalid_grant} times (a stale or reused refresh token)"
        + (f"; dead attempts {_ids(unexplained)}: " + _outcomes(unexplained) if unexplained else "")
        + (
            f", although ambiguous attempts {_ids(ambiguous)} may have reached the provider late: the loss "
            "is misclassified (I5)"
            if unexplained and ambiguous
            else ""
        )
    )
    return False


def _check_workers(ev: _Evidence, lost_to_slowness: bool, found: _Findings) -> None:
    """What the workers saw: errors, access tokens the resource rejected, tokens left in plaintext (I6)."""
    counts = ev.counts
    errors = dict(counts.errors)
    if lost_to_slowness:
        followed = {code: errors.pop(code) for code in GRANT_LOST_CODES & errors.keys()}
        if followed:
            found.slowness.append("after the loss, workers were told the grant needs re-consent: " + _listing(followed))
    if errors:
        found.failures.append("workers saw errors that are not slowness: " + _listing(errors))
    if counts.resource_rejected and lost_to_slowness:
        found.slowness.append(
            f"{counts.resource_rejected} resource checks rejected once the provider revoked the grant"
        )
    elif counts.resource_rejected:
        found.failures.append(
            f"{counts.resource_rejected} access tokens the keeper served were rejected by the resource within the "
            "validity it guarantees"
        )
    if ev.leaks:
        found.failures.append("a token or the client secret is in plaintext in " + ", ".join(ev.leaks))


def _check_coverage(ev: _Evidence, lost_to_slowness: bool, found: _Findings) -> None:
    """Whether the run showed anything: slow calls, late checks, no accepted token, no refresh at all."""
    counts = ev.counts
    if counts.slow:
        found.slowness.append("slow or dropped calls (not failures): " + _listing(counts.slow))
    if counts.resource_late:
        found.slowness.append(
            f"{counts.resource_late} rejected checks came too late to count: the machine was overloaded"
        )
    if counts.resource_ok == 0 and not lost_to_slowness:
        found.inconclusive.append("no access token was ever accepted by the resource (every check was too slow)")
    if ev.final - ev.initial == 0 and not lost_to_slowness:
        found.inconclusive.append("the grant was never refreshed")


def _summary(ev: _Evidence, elapsed: float) -> dict[str, Any]:
    judged = _judge(ev)
    options, counts = ev.options, ev.counts
    advanced = ev.final - ev.initial
    slow_note = f" ({'; '.join(judged.slowness)})" if judged.slowness else ""
    if judged.outcome == "pass":
        verdict = (
            f"PASS: {counts.token_calls} token calls from {options.processes * options.threads} workers in "
            f"{options.processes} processes cost {ev.refresh_calls} provider refresh calls, one per generation; no "
            "refresh token was spent twice and every access token served was accepted" + slow_note
        )
    elif judged.outcome == "slow":
        verdict = (
            "SLOW: no invariant broke, but this machine was too slow for the run to show them: "
            + "; ".join(judged.inconclusive) + slow_note + ". Run it again on a less loaded machine"
        )  # fmt: skip
    else:
        verdict = "FAIL: " + "; ".join(judged.failures)
    return {
        "passed": judged.outcome == "pass",
        "outcome": judged.outcome,
        "verdict": verdict,
        "failures": judged.failures,
        "inconclusive": judged.inconclusive,
        "slowness": judged.slowness,
        "seconds": options.seconds,
        "processes": options.processes,
        "threads": options.threads,
        "access_ttl": options.access_ttl,
        "resource_timeout": options.resource_timeout,
        "request_timeout": options.request_timeout,
        "elapsed_seconds": round(elapsed, 3),
        "provider_refresh_calls": ev.refresh_calls,
        "minimum_refresh_calls": advanced,
        "generations_advanced": advanced,
        "initial_generation": ev.initial,
        "final_generation": ev.final,
        "invalid_grant": ev.provider_errors.get("invalid_grant", 0),
        "reuse_detections": ev.reuse_detections,
        "provider_errors": ev.provider_errors,
        "ambiguous_attempts": judged.ambiguous,
        "token_calls": counts.token_calls,
        "resource_ok": counts.resource_ok,
        "resource_rejected": counts.resource_rejected,
        "resource_rejected_late": counts.resource_late,
        "errors": counts.errors,
        "slow": counts.slow,
        "leaks": ev.leaks,
        "workers_reported": ev.reported,
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
    grid.add_row("worker errors", escape(_listing(summary["errors"])), "")
    grid.add_row("slow or dropped calls", escape(_listing(summary["slow"])), "reported, not failed")
    grid.add_row("final generation", str(summary["final_generation"]), "")
    console.print(grid)
    style = {"pass": "bold green", "slow": "bold yellow"}.get(summary["outcome"], "bold red")
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
@json_option("Print the summary as one JSON object; no live display.")
@click.pass_context
def demo(ctx: click.Context, seconds: float, processes: int, threads: int, access_ttl: float, as_json: bool) -> None:
    """Prove the invariants live: many processes and threads, one rotating grant, a local provider.

    Uses a temporary store (not --store). Exits 0 (PASS) if every provider refresh call committed exactly one
    generation and no invalid_grant, stale token, rejected access token, leaked token or worker error was seen;
    1 (FAIL) if an invariant broke; 6 (SLOW) if the machine was too slow for the run to show them. Slow calls
    are reported, never failed.
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
    ctx.exit(EXIT_CODES[summary["outcome"]])
