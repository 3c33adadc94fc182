"""The console's grants list, read straight from real stores (SQLite and PostgreSQL): keyset pages visit every grant
exactly once in the order asked for, backwards as forwards; filters, search and the key's patterns narrow it; and
the dashboard counts what is there."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from grantkeeper import Provider, Secret
from grantkeeper.serve.console import queries
from grantkeeper.stores import SQLStore, open_store
from grantkeeper.stores.transactions import Op, Sql
from tests.conftest import TEST_KEY

NOW = time.time()
GRANTS = 61
PAGE = 7


def _mark_needs_reauth(_store: SQLStore, names: list[str]) -> Op[None]:
    for name in names:
        yield Sql("UPDATE grants SET state = 'needs_reauth' WHERE name = ?", (name,), wait=False)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SQLStore]:
    monkeypatch.setenv("GRANTKEEPER_RECOVERY_DIR", str(tmp_path / "recovery"))
    if request.param == "sqlite":
        opened = open_store(f"sqlite://{tmp_path}/list.db")
    else:
        monkeypatch.setenv("GRANTKEEPER_KEY", TEST_KEY)
        opened = open_store(request.getfixturevalue("pg_url"), migrate=True)
    yield opened
    opened.close()


@pytest.fixture
def grants(store: SQLStore) -> dict[str, dict[str, Any]]:
    """GRANTS grants over two providers: assorted generations, access-token expiries (some none) and states."""
    rng = random.Random(16)
    for provider, idle in (("alpha", 30 * 86400.0), ("beta", None)):
        store.put_provider(Provider(name=provider, token_url="https://login.example/token", client_id="c",
                                    client_secret=Secret("s"), refresh_idle_ttl=idle), now=NOW)  # fmt: skip
    made: dict[str, dict[str, Any]] = {}
    for i in range(GRANTS):
        name = f"{'acme' if i % 3 else 'zeta'}-{i:03d}"
        expires = None if i % 5 == 0 else NOW + rng.choice([60.0, 600.0, 3600.0])  # ties on purpose
        generation = rng.randint(1, 4)
        provider = "alpha" if i % 2 else "beta"
        store.import_grant(name, provider=provider, refresh_token=Secret(f"rt-{i}"), scopes=(), now=NOW,
                           min_generation=generation, access_token=Secret(f"at-{i}") if expires else None,
                           expires_at=expires)  # fmt: skip
        made[name] = {"provider": provider, "expires": expires or 0, "generation": generation, "state": "active"}
    failing = [n for n in made if n.endswith("7")]
    store._perform(_mark_needs_reauth, True, failing)
    for name in failing:
        made[name]["state"] = "needs_reauth"
    return made


def _walk(store: SQLStore, query: queries.GrantsQuery) -> list[list[str]]:
    pages = []
    page = queries.grants_page(store, query)
    while True:
        pages.append([r.name for r in page.rows])
        if not page.more_after:
            return pages
        last = page.rows[-1]
        query = replace(query, after=(last.sort_value, last.name), before=None)
        page = queries.grants_page(store, query)


@pytest.mark.parametrize("sort", list(queries.SORTS))
@pytest.mark.parametrize("descending", [False, True])
def test_pages_visit_every_grant_once_in_order(store: SQLStore, grants: dict[str, dict[str, Any]], sort: str,
                                                descending: bool) -> None:  # fmt: skip
    query = queries.GrantsQuery(sort=sort, descending=descending, limit=PAGE)
    pages = _walk(store, query)
    field = {"name": None, "provider": "provider", "state": "state", "expires": "expires", "generation": "generation"}
    expected = sorted(grants, key=lambda n: (grants[n][field[sort]] if field[sort] else n, n), reverse=descending)
    assert [n for page in pages for n in page] == expected
    assert all(len(p) == PAGE for p in pages[:-1]) and len(pages) == -(-GRANTS // PAGE)
    # Backwards from the last page, with `before`, gives the same pages.
    back = [pages[-1]]
    first_rows = queries.grants_page(store, replace(query, after=None))
    assert not first_rows.more_before
    cursor = pages[-1][0]
    rows = {r.name: r for r in _all_rows(store, query)}
    while True:
        page = queries.grants_page(store, replace(query, before=(rows[cursor].sort_value, cursor)))
        back.insert(0, [r.name for r in page.rows])
        if not page.more_before:
            break
        cursor = page.rows[0].name
    assert back == pages


def _all_rows(store: SQLStore, query: queries.GrantsQuery) -> list[queries.GrantRow]:
    return queries.grants_page(store, replace(query, limit=GRANTS + 1)).rows


def test_filters_search_and_patterns_narrow_the_list(store: SQLStore, grants: dict[str, dict[str, Any]]) -> None:
    def names(**options: Any) -> list[str]:
        return [n for page in _walk(store, queries.GrantsQuery(limit=PAGE, **options)) for n in page]

    assert names(state="needs_reauth") == sorted(n for n, g in grants.items() if g["state"] == "needs_reauth")
    assert names(provider="beta") == sorted(n for n, g in grants.items() if g["provider"] == "beta")
    assert names(search="ZETA-01") == sorted(n for n in grants if n.startswith("zeta-01"))  # any case
    assert names(search="%") == [] and names(search="_") == []  # LIKE's wildcards are plain text
    assert names(patterns=("acme-01*", "zeta-003")) == sorted(
        n for n in grants if n.startswith("acme-01") or n == "zeta-003"
    )
    both = names(state="active", provider="alpha", search="acme", sort="generation")
    assert both == sorted((n for n, g in grants.items() if g["state"] == "active" and g["provider"] == "alpha"
                           and n.startswith("acme")), key=lambda n: (grants[n]["generation"], n))  # fmt: skip
    rows = {r.name: r for r in _all_rows(store, queries.GrantsQuery())}
    idle = rows["acme-001"].end("idle")  # provider alpha has a 30-day idle lifetime
    assert idle is not None and idle.deadline == pytest.approx(NOW + 30 * 86400.0, abs=5)
    assert rows["zeta-000"].end("idle") is None and rows["zeta-000"].expires_at is None


def test_the_list_shows_the_schedulers_view(store: SQLStore, grants: dict[str, dict[str, Any]]) -> None:
    store.set_hot("acme-001", True)
    store.note_used(["acme-002"], now=time.time(), window=queries.HOT_WINDOW)
    store.plan_due([("acme-004", time.time() + 3600.0, None)])
    rows = {r.name: r for r in _all_rows(store, queries.GrantsQuery())}
    assert rows["acme-001"].scheduler == "hot (marked); next look now"
    assert rows["acme-002"].scheduler.startswith("hot (token handed out ")
    assert rows["acme-004"].scheduler.startswith("not hot; next look in 3")
    assert rows["acme-017"].scheduler == "-"  # needs re-authorization: nothing for the scheduler to do
    assert queries.scheduler_of(store, "acme-001", now=time.time()) == rows["acme-001"].scheduler
    # The hot window is the scheduler's as configured: handed out moments ago is not hot under a window of 0.
    narrow = {r.name: r for r in _all_rows(store, queries.GrantsQuery(hot_window=0.0))}
    assert narrow["acme-002"].scheduler.startswith("not hot")
    assert queries.scheduler_of(store, "acme-002", now=time.time(), hot_window=0.0).startswith("not hot")


def test_a_cursor_that_is_not_one_starts_over() -> None:
    row = queries.GrantRow("acme-1", "alpha", "active", 1, None, None, None, (), 5.0, "-")
    assert queries.decode_cursor(queries.encode_cursor(row)) == (5.0, "acme-1")
    for text in ("", "!!!", "bnVsbA", "WzEsMiwzXQ", "e30"):  # not base64, null, [1,2,3], {}
        assert queries.decode_cursor(text) is None


def test_the_dashboard_counts_states_minutes_and_endings(store: SQLStore, grants: dict[str, dict[str, Any]]) -> None:
    numbers = queries.overview(store, now=NOW + 60)
    failing = sum(1 for g in grants.values() if g["state"] == "needs_reauth")
    assert numbers.by_state == {"active": GRANTS - failing, "needs_reauth": failing}
    assert sum(sum(c.values()) for c in numbers.per_minute) == 0  # no attempt was made
    assert numbers.expiring_total == 0  # alpha's idle lifetime is 30 days
    later = queries.overview(store, now=NOW + 25 * 86400.0)  # within 7 days of the idle end of alpha's grants
    alpha_active = sum(1 for g in grants.values() if g["provider"] == "alpha" and g["state"] == "active")
    assert later.expiring_total == alpha_active
    assert [e.deadline for e in later.expiring] == sorted(e.deadline for e in later.expiring)
    assert all(e.kind == "idle" and e.provider == "alpha" for e in later.expiring)
