"""Rendering the console's pages: the Jinja2 environment, its filters, and what a grant's page shows.

Autoescaping is on for every template. Pages show names, numbers, times, fingerprints and the doctor's words;
nothing a template receives holds a token (the grant page gets `GrantStatus`, `Diagnosis` and `Attempt`s, which
carry fingerprints only).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from grantkeeper.cli._render import relative
from grantkeeper.diagnosis.doctor import span
from grantkeeper.model import Attempt, AttemptState
from grantkeeper.model.times import iso_utc

__all__ = ["TEMPLATES", "LineageStep", "environment", "evidence_rows", "lineage"]

TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "console"
#: Evidence entries that describe one attempt (`grantkeeper.diagnosis.doctor`), shown as attempt tables.
_ATTEMPT_KEYS = ("attempt", "last_commit", "refreshing", "committed_by", "used_by")


def _when(ts: float | None) -> str:
    return "-" if ts is None else iso_utc(ts)


def _left(ts: float | None) -> str:
    return "-" if ts is None else relative(ts, time.time())


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)  # fmt: skip
    env.filters.update(when=_when, left=_left, seconds=_seconds)
    return env


@dataclass(frozen=True, slots=True)
class LineageStep:
    """One generation of a grant's refresh tokens: its fingerprint and how it came to be."""

    generation: int
    refresh_fp: str
    since: float | None  # when the attempt that made it committed
    by: str  # the worker that committed it, or "" (imported, or history pruned)
    current: bool


def lineage(history: list[Attempt], current_generation: int, current_fp: str | None) -> list[LineageStep]:
    """The grant's refresh-token fingerprints by generation, newest first, from its attempt history: each
    committed attempt turned generation g's token (``refresh_fp``) into g+1's (``received_fp``)."""
    steps: dict[int, LineageStep] = {}
    for a in sorted(history, key=lambda a: a.id):
        steps.setdefault(a.generation, LineageStep(a.generation, a.refresh_fp, None, "", False))
        if a.state in (AttemptState.COMMITTED, AttemptState.RECOVERED) and a.new_generation is not None:
            steps[a.new_generation] = LineageStep(a.new_generation, a.received_fp or "-", a.finished_at, a.worker,
                                                  False)  # fmt: skip
    if current_fp is not None:
        known = steps.get(current_generation)
        steps[current_generation] = LineageStep(current_generation, current_fp, known.since if known else None,
                                                known.by if known else "", True)  # fmt: skip
    return [steps[g] for g in sorted(steps, reverse=True)]


def evidence_rows(evidence: dict[str, Any]) -> tuple[list[tuple[str, list[dict[str, Any]]]], list[tuple[str, str]]]:
    """The doctor's structured evidence for people: (attempt tables, other facts as label/value pairs)."""
    tables: list[tuple[str, list[dict[str, Any]]]] = []
    facts: list[tuple[str, str]] = []
    for key, value in evidence.items():
        label = key.replace("_", " ")
        if key in _ATTEMPT_KEYS and value:
            tables.append((label, value if isinstance(value, list) else [value]))
        elif key == "ends" and isinstance(value, list):
            for end in value:
                facts.append((f"refresh token ends ({end.get('kind')})", _when(end.get("deadline"))
                              + ("" if end.get("renewable") else ", only a new consent renews it")))  # fmt: skip
        elif key.endswith("_seconds") and isinstance(value, int | float):
            facts.append((label.removesuffix(" seconds"), span(float(value))))
        elif key.endswith("_at") and isinstance(value, int | float):
            facts.append((label, _when(float(value))))
        elif isinstance(value, dict | list):
            facts.append((label, ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict)
                          else ", ".join(map(str, value))))  # fmt: skip
        elif value is not None:
            facts.append((label, str(value)))
    return tables, facts
