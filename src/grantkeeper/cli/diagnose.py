"""``grantkeeper doctor`` and ``grantkeeper history``: why a grant failed, and every attempt behind it."""

from __future__ import annotations

from typing import Any

import click

from grantkeeper.cli import _render
from grantkeeper.cli._io import echo_json, json_option, open_keeper
from grantkeeper.cli._session import Session
from grantkeeper.cli.completion import grant_argument
from grantkeeper.diagnosis import Diagnosis
from grantkeeper.model import Attempt

__all__ = ["EXIT_ATTENTION", "attempt_dict", "doctor", "history"]

EXIT_ATTENTION = 12  # the grant needs attention (shared with keepalive)


def diagnosis_lines(d: Diagnosis) -> list[str]:
    lines = [f"{d.grant}: {d.cause}", f"  {_render.clean(d.summary)}"]
    lines += [f"  - {_render.clean(fact)}" for fact in d.facts]
    lines.append(f"  next: {_render.clean(d.next_step)}")
    return lines


@click.command(short_help="Explain why grant NAME failed (or that it is healthy), and what to do next.")
@grant_argument()
@json_option("Print the diagnosis as JSON (format: docs/doctor.md).")
@click.pass_obj
def doctor(session: Session, name: str, as_json: bool) -> None:
    """Explain grant NAME: the cause of its latest failure with the evidence and the next step, or its health.

    Exits 0 when the grant is healthy and 12 when it needs attention.
    """
    with open_keeper(session) as keeper:
        diagnosis = keeper.doctor(name)
    if as_json:
        echo_json(diagnosis.as_dict())
    else:
        for line in diagnosis_lines(diagnosis):
            click.echo(line)
    if not diagnosis.healthy:
        raise click.exceptions.Exit(EXIT_ATTENTION)


def attempt_dict(a: Attempt) -> dict[str, Any]:
    """One attempt as `history --json` prints it (stable keys; fingerprints, never tokens)."""
    return {
        "id": a.id, "grant": a.grant, "started_at": a.started_at, "finished_at": a.finished_at, "worker": a.worker,
        "actor": a.actor, "try": a.try_number, "generation": a.generation, "new_generation": a.new_generation,
        "sent_fp": a.refresh_fp, "received_fp": a.received_fp, "rotated": a.rotated, "state": a.state.value,
        "outcome_class": a.outcome_class.value if a.outcome_class else None, "outcome": a.outcome,
        "error_code": a.error_code, "error_description": a.error_description, "http_status": a.http_status,
        "latency": a.latency, "resend_of": a.resend_of, "evidence": dict(a.evidence),
    }  # fmt: skip


def _row(a: Attempt) -> list[object]:
    generation = f"{a.generation}->{a.new_generation}" if a.new_generation is not None else str(a.generation)
    outcome = (a.outcome_class.value if a.outcome_class else a.state.value) + (
        f" ({a.error_code})" if a.error_code and a.outcome_class and a.error_code not in a.outcome_class else ""
    )
    if a.resend_of is not None:
        outcome += f" [re-send of {a.resend_of}]"
    worker = a.worker + (f" {a.actor}" if a.actor else "")
    latency = f"{a.latency * 1000:.0f} ms" if a.latency is not None else "-"
    rotated = {True: "yes", False: "no", None: "-"}[a.rotated]
    style = "yellow" if a.outcome_class is None else "red" if a.outcome_class.is_failure else "green"
    return [_render.iso_utc(a.started_at), a.id, worker, generation, a.refresh_fp, a.received_fp or "-", rotated,
            latency, _render.Styled(outcome, style)]  # fmt: skip


@click.command(short_help="Show grant NAME's refresh attempts, newest first.")
@grant_argument()
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Show this many attempts.")
@json_option("Print the attempts as a JSON list (format: docs/doctor.md).")
@click.pass_obj
def history(session: Session, name: str, limit: int, as_json: bool) -> None:
    """Show grant NAME's refresh attempts, newest first: when, which worker, generation, fingerprints, outcome."""
    with open_keeper(session) as keeper:
        attempts = keeper.history(name, limit=limit)
    if as_json:
        echo_json([attempt_dict(a) for a in attempts])
        return
    if not attempts:
        click.echo(f"grant {name} has no recorded refresh attempts (retention may have pruned older ones)")
        return
    headers = ["time", "id", "worker", "gen", "sent", "received", "rotated", "latency", "outcome"]
    _render.echo_table(headers, [_row(a) for a in attempts])
