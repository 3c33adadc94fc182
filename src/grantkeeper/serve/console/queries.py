"""What the console reads from the store, in statements that stay fast at any number of grants.

The grants list is paged by keyset: each page is one index range scan from the last row of the previous page
(``(sort key, name) > (?, ?)``, schema version 10's indexes), never an OFFSET and never every grant. Filters
(state, provider, a name substring) and the API key's grant patterns go into the same statement. Operations are
the store's own kind (`grantkeeper.stores.transactions`), so the same code runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from grantkeeper.engine.scheduler import SchedulerOptions
from grantkeeper.model import GrantState, RotationMode
from grantkeeper.model.lifetimes import RefreshTokenExpiry, token_ends
from grantkeeper.stores import SQLStore
from grantkeeper.stores.access import grant_matches
from grantkeeper.stores.transactions import Op, Sql

__all__ = [
    "PAGE_SIZE",
    "SORTS",
    "ActivityRow",
    "GrantRow",
    "GrantsPage",
    "GrantsQuery",
    "Overview",
    "decode_cursor",
    "encode_cursor",
    "grants_page",
    "key_last_used",
    "overview",
    "recent_attempts",
]

PAGE_SIZE = 50
#: Sort name -> the expression ordered by (each has an index ending in ``name``: see the module docstring).
SORTS: dict[str, str] = {
    "name": "grants.name",
    "provider": "grants.provider",
    "state": "grants.state",
    "expires": "COALESCE(grants.expires_at, 0)",
    "generation": "grants.generation",
}
_LAST_OUTCOME = (
    "(SELECT COALESCE(a.outcome_class, a.state) FROM attempts a WHERE a.grant_name = grants.name "
    "ORDER BY a.id DESC LIMIT 1)"
)
_ROW_COLUMNS = (
    "grants.name", "grants.provider", "grants.state", "grants.generation", "grants.expires_at", "grants.last_error",
    "grants.refreshed_at", "grants.created_at", "grants.refresh_expires_at", "providers.refresh_idle_ttl",
    "providers.refresh_absolute_ttl", "providers.rotation", _LAST_OUTCOME, "grants.hot", "grants.last_used_at",
    "grants.next_due_at",
)  # fmt: skip
_ROW = ", ".join(_ROW_COLUMNS)
_ROW_WIDTH = len(_ROW_COLUMNS)  # a page's query puts its sort key right after the row
#: A grant whose token `serve` handed out this recently counts as hot: the scheduler's default `hot_window`
#: (`serve` passes the configured one).
HOT_WINDOW = SchedulerOptions().hot_window


def scheduler_text(
    marked: bool, last_used_at: float | None, next_due_at: float, now: float, hot_window: float = HOT_WINDOW
) -> str:
    """The refresh scheduler's view of a grant, for people: hot or not, and when it looks at the grant next."""
    if marked:
        who = "hot (marked)"
    elif last_used_at is not None and now - last_used_at <= hot_window:
        who = f"hot (token handed out {now - last_used_at:.0f} s ago)"
    else:
        who = "not hot"
    return f"{who}; next look {'now' if next_due_at <= now else f'in {next_due_at - now:.0f} s'}"


@dataclass(frozen=True, slots=True)
class GrantRow:
    """One line of the grants list: names, numbers and times, never a token."""

    name: str
    provider: str
    state: str
    generation: int
    expires_at: float | None
    last_error: str | None
    last_outcome: str | None
    ends: tuple[RefreshTokenExpiry, ...]
    sort_value: Any
    scheduler: str  # `scheduler_text`, "-" for a grant that is not active

    def end(self, kind: str) -> RefreshTokenExpiry | None:
        return next((e for e in self.ends if e.kind == kind), None)


@dataclass(frozen=True, slots=True)
class GrantsQuery:
    """A page request: filters, sort and where to start (a cursor from `encode_cursor`)."""

    state: str | None = None
    provider: str | None = None
    search: str | None = None
    sort: str = "name"
    descending: bool = False
    after: tuple[Any, str] | None = None
    before: tuple[Any, str] | None = None
    patterns: tuple[str, ...] = ("*",)
    limit: int = PAGE_SIZE
    hot_window: float = HOT_WINDOW  # the scheduler's, for the scheduler column


@dataclass(frozen=True, slots=True)
class GrantsPage:
    rows: list[GrantRow]
    more_after: bool  # a next page exists
    more_before: bool  # a previous page exists


def encode_cursor(row: GrantRow) -> str:
    """A row's place in its sort order, for the next page's link (opaque to people, not secret)."""
    return base64.urlsafe_b64encode(json.dumps([row.sort_value, row.name]).encode()).decode().rstrip("=")


def decode_cursor(text: str | None) -> tuple[Any, str] | None:
    """`encode_cursor`'s inverse; None for anything that is not one (a stale or edited link starts over)."""
    if not text:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error):
        return None
    if (not isinstance(value, list) or len(value) != 2 or not isinstance(value[1], str)
            or not isinstance(value[0], str | int | float)):  # fmt: skip
        return None
    return value[0], value[1]


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _pattern_filter(patterns: tuple[str, ...]) -> tuple[str, list[str]]:
    """An API key's grant patterns as SQL (``*`` -> ``%``); the caller re-checks each row exactly, because
    SQLite's LIKE ignores ASCII case."""
    if "*" in patterns:
        return "", []
    return "(" + " OR ".join(["grants.name LIKE ? ESCAPE '\\'"] * len(patterns)) + ")", [
        "%".join(_like(part) for part in p.split("*")) for p in patterns
    ]


def _row(r: Any, now_sort: Any, hot_window: float = HOT_WINDOW) -> GrantRow:
    ends = token_ends(
        str(r[0]), str(r[1]), created_at=r[7], refreshed_at=r[6], refresh_expires_at=r[8], idle_ttl=r[9],
        absolute_ttl=r[10], rotates=str(r[11]) != RotationMode.NEVER.value,
    )  # fmt: skip
    active = str(r[2]) == GrantState.ACTIVE.value
    scheduler = scheduler_text(bool(r[13]), r[14], float(r[15]), time.time(), hot_window) if active else "-"
    return GrantRow(name=str(r[0]), provider=str(r[1]), state=str(r[2]), generation=int(r[3]), expires_at=r[4],
                    last_error=r[5], last_outcome=r[12], ends=tuple(sorted(ends, key=lambda e: e.deadline)),
                    sort_value=now_sort, scheduler=scheduler)  # fmt: skip


def _grants_page(_store: SQLStore, q: GrantsQuery) -> Op[GrantsPage]:
    key = SORTS.get(q.sort, SORTS["name"])
    where: list[str] = []
    params: list[Any] = []
    if q.state:
        where.append("grants.state = ?")
        params.append(q.state)
    if q.provider:
        where.append("grants.provider = ?")
        params.append(q.provider)
    if q.search:
        where.append("LOWER(grants.name) LIKE ? ESCAPE '\\'")
        params.append("%" + _like(q.search.lower()) + "%")
    patterns, values = _pattern_filter(q.patterns)
    if patterns:
        where.append(patterns)
        params.extend(values)
    backwards = q.before is not None and q.after is None
    cursor = q.before if backwards else q.after
    # Paging backwards reads the reversed order from the cursor, then turns the page round.
    descending = q.descending != backwards
    past, order = ("<", "DESC") if descending else (">", "ASC")
    if cursor is not None and key == SORTS["name"]:
        where.append(f"grants.name {past} ?")
        params.append(cursor[1])
    elif cursor is not None:
        # Spelled out rather than as a row value: "key >= ?" is a range both SQLite and PostgreSQL start the index
        # scan at (SQLite scans an expression index from its end for a row-value bound).
        where.append(f"{key} {past}= ? AND ({key} {past} ? OR grants.name {past} ?)")
        params.extend((cursor[0], cursor[0], cursor[1]))
    ordering = f"grants.name {order}" if key == SORTS["name"] else f"{key} {order}, grants.name {order}"
    # LEFT JOIN (every grant has its provider) keeps grants the outer loop, so SQLite reads them in index order
    # and stops after one page, instead of looping over providers and sorting every matching grant.
    sql = (
        f"SELECT {_ROW}, {key} FROM grants LEFT JOIN providers ON providers.name = grants.provider "
        + (("WHERE " + " AND ".join(where) + " ") if where else "")
        + f"ORDER BY {ordering} LIMIT ?"
    )
    rows = (yield Sql(sql, (*params, q.limit + 1))).fetchall()
    more = len(rows) > q.limit
    found = [_row(r, r[_ROW_WIDTH], q.hot_window) for r in rows[: q.limit]]
    if backwards:
        found.reverse()
        return GrantsPage(found, more_after=True, more_before=more)
    return GrantsPage(found, more_after=more, more_before=cursor is not None)


def _scheduler_of(_store: SQLStore, name: str, now: float, hot_window: float) -> Op[str]:
    row = (yield Sql("SELECT hot, last_used_at, next_due_at, state FROM grants WHERE name = ?", (name,))).fetchone()
    if row is None or str(row[3]) != GrantState.ACTIVE.value:
        return "-"
    return scheduler_text(bool(row[0]), row[1], float(row[2]), now, hot_window)


def scheduler_of(store: SQLStore, name: str, *, now: float, hot_window: float = HOT_WINDOW) -> str:
    """`scheduler_text` of grant `name` ("-" if it is not active)."""
    return store._perform(_scheduler_of, False, name, now, hot_window)


def grants_page(store: SQLStore, query: GrantsQuery) -> GrantsPage:
    """One page of the grants list (blocking: run it in a worker thread)."""
    page: GrantsPage = store._perform(_grants_page, False, query)
    if "*" in query.patterns:
        return page
    return GrantsPage([r for r in page.rows if grant_matches(r.name, query.patterns)], page.more_after,
                      page.more_before)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ActivityRow:
    """A refresh attempt as the activity list shows it."""

    id: int
    grant: str
    generation: int
    worker: str
    started_at: float
    finished_at: float | None
    outcome: str
    error_code: str | None
    http_status: int | None
    latency: float | None


def _recent_attempts(_store: SQLStore, limit: int) -> Op[list[ActivityRow]]:
    rows = (
        yield Sql(
            "SELECT id, grant_name, generation, worker, started_at, finished_at, COALESCE(outcome_class, state), "
            "error_code, http_status, latency FROM attempts ORDER BY id DESC LIMIT ?",
            (limit,),
        )
    ).fetchall()
    return [ActivityRow(int(r[0]), str(r[1]), int(r[2]), str(r[3]), float(r[4]), r[5], str(r[6]), r[7], r[8], r[9])
            for r in rows]  # fmt: skip


def recent_attempts(store: SQLStore, *, limit: int = 50) -> list[ActivityRow]:
    """The newest refresh attempts of every grant (blocking)."""
    return store._perform(_recent_attempts, False, limit)


def _key_last_used(_store: SQLStore, names: list[str]) -> Op[dict[str, float | None]]:
    found: dict[str, float | None] = {}
    for name in names:  # one probe of audit_by_key each: a key is used by many requests, MAX is its last
        row = (yield Sql("SELECT MAX(at) FROM audit WHERE api_key = ?", (name,))).fetchone()
        found[name] = None if row is None or row[0] is None else float(row[0])
    return found


def key_last_used(store: SQLStore, names: list[str]) -> dict[str, float | None]:
    """When each API key was last used, from the audit trail (None: not within its retention)."""
    return store._perform(_key_last_used, False, names)


#: "Expiring soon" on the dashboard: a refresh token or consent that ends within this many seconds.
EXPIRING_WINDOW = 7 * 86400.0
_EXPIRING_SHOWN = 20


@dataclass(frozen=True, slots=True)
class Overview:
    """The dashboard's numbers: grants by state, refreshes per minute by outcome, refresh tokens ending soon."""

    by_state: dict[str, int]
    per_minute: list[Counter[str]]  # oldest minute first; the last is the current minute
    expiring: list[RefreshTokenExpiry]  # soonest first, at most `_EXPIRING_SHOWN`
    expiring_total: int


def _overview(_store: SQLStore, now: float, minutes: int) -> Op[Overview]:
    by_state = {state.value: 0 for state in GrantState}
    for state, count in (yield Sql("SELECT state, COUNT(*) FROM grants GROUP BY state")).fetchall():
        by_state[str(state)] = int(count)
    start = now - minutes * 60.0
    per_minute: list[Counter[str]] = [Counter() for _ in range(minutes)]
    attempts = (
        yield Sql(
            "SELECT started_at, COALESCE(outcome_class, state) FROM attempts WHERE started_at >= ? "
            "ORDER BY started_at LIMIT 200000",
            (start,),
        )
    ).fetchall()
    for started_at, outcome in attempts:
        per_minute[min(minutes - 1, int((float(started_at) - start) // 60))][str(outcome)] += 1
    horizon = now + EXPIRING_WINDOW
    rows = (
        yield Sql(
            f"SELECT {_ROW} FROM grants JOIN providers ON providers.name = grants.provider WHERE grants.state = ? "
            "AND ((providers.refresh_absolute_ttl IS NOT NULL AND grants.created_at + providers.refresh_absolute_ttl "
            "< ?) OR (providers.refresh_idle_ttl IS NOT NULL AND grants.refreshed_at + providers.refresh_idle_ttl < ?)"
            " OR grants.refresh_expires_at < ?)",
            (GrantState.ACTIVE.value, horizon, horizon, horizon),
        )
    ).fetchall()
    ends = []
    for r in rows:
        soon = [e for e in _row(r, None).ends if e.deadline < horizon]
        ends.append(min(soon, key=lambda e: (e.renewable, e.deadline)))  # a consent's end first, as `expiring`
    ends.sort(key=lambda e: e.deadline)
    return Overview(by_state, per_minute, ends[:_EXPIRING_SHOWN], len(ends))


def overview(store: SQLStore, *, now: float, minutes: int = 60) -> Overview:
    """The dashboard's numbers over the last `minutes` (blocking)."""
    return store._perform(_overview, False, now, minutes)
