"""The dashboard's charts as inline SVG, drawn on the server: no script, no chart library, no CDN.

Colours are presentation attributes and CSS classes (``console.css``), never ``style`` attributes, so the
Content-Security-Policy needs no ``'unsafe-inline'`` for styles either. Every label is escaped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from html import escape

__all__ = ["bars", "outcome_class", "stacked_columns"]

_OK = ("committed", "recovered", "superseded")
#: Outcomes the keeper retries by itself, and attempts still running.
_WAIT = ("provider_unavailable", "ambiguous", "deferred", "open", "not_sent")


def outcome_class(outcome: str) -> str:
    """The CSS class an outcome is drawn in: ok (green), wait (amber: retried by itself) or bad (red)."""
    if outcome in _OK:
        return "ok"
    if outcome in _WAIT:
        return "wait"
    return "bad"


def stacked_columns(columns: Sequence[Counter[str]], *, width: int = 720, height: int = 180, label: str) -> str:
    """One column per minute, stacked by outcome, oldest on the left; `label` is the chart's accessible name."""
    top = max((sum(c.values()) for c in columns), default=0) or 1
    plot_h, base = height - 30, height - 20
    step = width / max(1, len(columns))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(label)}">']  # fmt: skip
    parts.append(f'<line class="axis" x1="0" y1="{base}" x2="{width}" y2="{base}"/>')
    for i, column in enumerate(columns):
        y = float(base)
        for outcome, count in sorted(column.items(), key=lambda item: (outcome_class(item[0]), item[0])):
            h = plot_h * count / top
            y -= h
            parts.append(f'<rect class="{outcome_class(outcome)}" x="{i * step + 1:.1f}" y="{y:.1f}" '
                         f'width="{max(1.0, step - 2):.1f}" height="{h:.1f}"><title>{escape(outcome)}: {count}'
                         "</title></rect>")  # fmt: skip
    parts.append(f'<text x="0" y="{height - 4}">-{len(columns)} min</text>')
    parts.append(f'<text x="{width}" y="{height - 4}" text-anchor="end">now</text>')
    parts.append(f'<text x="{width}" y="12" text-anchor="end">max {top}/min</text>')
    parts.append("</svg>")
    return "".join(parts)


def bars(values: Sequence[tuple[str, int, str]], *, width: int = 360, label: str) -> str:
    """Horizontal bars: (name, value, CSS class) each, with the value written at the bar's end."""
    top = max((v for _, v, _ in values), default=0) or 1
    row, left = 26, 110
    height = row * max(1, len(values)) + 4
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(label)}">']  # fmt: skip
    for i, (name, value, css) in enumerate(values):
        y = i * row + 4
        w = (width - left - 60) * value / top
        parts.append(f'<text x="0" y="{y + 15}">{escape(name)}</text>')
        parts.append(f'<rect class="{escape(css)}" x="{left}" y="{y}" width="{w:.1f}" height="{row - 8}"/>')
        parts.append(f'<text x="{left + w + 6:.1f}" y="{y + 15}">{value}</text>')
    parts.append("</svg>")
    return "".join(parts)
