"""The console's grants list at 100,000 grants against the same page at 100 grants, in one run.

Two SQLite stores, loaded the way `bench_scale` loads one (`bench_scale.make_rows`: sealed tokens, varied
expiries) with one refresh attempt per grant, so the list's "last outcome" reads the attempts table. Each case
renders ``GET /ui/grants...`` through the whole application (`grantkeeper.serve.app.create_app` over a real
`Broker`: session lookup, the keyset query, Jinja2, the security headers), in process over ASGI, signed in with
a real session cookie. Rounds alternate between the two stores (`benchmarks._common.interleave`).

Rows (A = 100,000 grants, B = 100 grants, per page rendered): the first page by name; a page from the middle by
access-token expiry, descending (a cursor into the expiry index); the first page filtered by state and provider.
Target: A/B <= 1.5 (a keyset page costs the same at any size). A note gives the absolute times and a name search
that matches nothing, which scans every name (the one list query that grows with the store).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import httpx

from benchmarks import bench_scale
from benchmarks._common import Report, Row, interleave, standalone

NAME = "console"
TITLE = "console grants list: a page at 100,000 grants vs at 100"
BIG, SMALL = 100_000, 100
TARGET = 1.5
CASES = {
    "first page by name": "/ui/grants",
    "middle page by expiry, descending": "/ui/grants?sort=expires&order=desc&after={middle}",
    "filtered by state and provider": "/ui/grants?state=active&provider=sim",
}
SEARCH = "/ui/grants?q=no-such-grant"


def _load(path: Path, grants: int, now: float) -> str:
    """A store of `grants` grants (named like `bench_scale`'s), each with one committed attempt; returns its URL."""
    from grantkeeper import Provider, Secret
    from grantkeeper.stores import open_store

    url = f"sqlite://{path}"
    store = open_store(url)
    store.put_provider(Provider(name=bench_scale.PROVIDER, token_url="https://login.example/token", client_id="c",
                                client_secret=Secret("s"), refresh_idle_ttl=30 * 86400.0), now=now)  # fmt: skip
    store.close()
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for start in range(0, grants, bench_scale.CHUNK):
            rows = bench_scale.make_rows((bench_scale.KEY, start, min(grants, start + bench_scale.CHUNK), now))
            conn.executemany(bench_scale.SQLITE_INSERT, rows)
            conn.executemany(
                "INSERT INTO attempts (grant_name, generation, refresh_fp, worker, fence, started_at, state, "
                "outcome, finished_at, outcome_class, new_generation) VALUES (?, 1, ?, 'bench', 1, ?, 'committed', "
                "'committed', ?, 'committed', 2)",
                [(r[0], r[3], now - 60, now - 59) for r in rows],
            )
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
    finally:
        conn.close()
    return url


class _Console:
    """One application over one store, signed in; `render(path)` is one page."""

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop, log: TextIO) -> None:
        from grantkeeper.keepers import AsyncKeeper
        from grantkeeper.serve.apikeys import new_key
        from grantkeeper.serve.app import create_app
        from grantkeeper.serve.config import load_config
        from grantkeeper.serve.console.routes import COOKIE
        from grantkeeper.serve.logs import configure_logging
        from grantkeeper.serve.runner import build_broker

        # The request log line is part of serving a page: written, as serve writes it, but to /dev/null.
        configure_logging("info", stream=log)
        self.loop = loop
        self.keeper = loop.run_until_complete(AsyncKeeper.open(url, create=False, threads=True))
        broker = build_broker(self.keeper, load_config(None, env={}), store_url=url)
        made = new_key("bench", grants="*", scopes="ui", now=time.time())
        broker.store.create_api_key(made.record, key=made.key)
        app = create_app(broker)
        cookie = app.state.console.sessions.create("bench", made.record.key_id, now=time.time())
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console",
                                        cookies={COOKIE: cookie})  # fmt: skip

    def render(self, path: str) -> None:
        answer = self.loop.run_until_complete(self.client.get(path))
        if answer.status_code != 200 or "<table" not in answer.text:
            raise AssertionError(f"{path}: {answer.status_code} {answer.text[:300]}")

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.run_until_complete(self.keeper.aclose())


def _middle_cursor(url: str) -> str:
    """The keyset cursor of the grant halfway down the expiry order (what a "next" link would carry)."""
    from grantkeeper.serve.console import queries

    conn = sqlite3.connect(url.removeprefix("sqlite://"))
    try:
        count = conn.execute("SELECT COUNT(*) FROM grants").fetchone()[0]
        name, expires = conn.execute("SELECT name, COALESCE(expires_at, 0) FROM grants ORDER BY 2 DESC, 1 DESC "
                                     "LIMIT 1 OFFSET ?", (count // 2,)).fetchone()  # fmt: skip
    finally:
        conn.close()
    return queries.encode_cursor(queries.GrantRow(name, "", "", 0, None, None, None, (), expires))


def _per_page(console: _Console, path: str, pages: int) -> Callable[[], float]:
    def round_() -> float:
        started = time.perf_counter_ns()
        for _ in range(pages):
            console.render(path)
        return (time.perf_counter_ns() - started) / pages

    return round_


def run(quick: bool = False) -> Report:
    pages, rounds, warmup = (3, 3, 1) if quick else (20, 11, 2)
    started = time.perf_counter()
    report = Report(NAME, TITLE)
    now = time.time()
    saved = {k: os.environ.get(k) for k in ("GRANTKEEPER_KEY", bench_scale.RECOVERY_ENV)}
    loop = asyncio.new_event_loop()
    consoles: list[_Console] = []
    with tempfile.TemporaryDirectory(prefix="gk-bench-console-") as tmp, open(os.devnull, "w") as log:
        os.environ["GRANTKEEPER_KEY"] = bench_scale.KEY
        os.environ[bench_scale.RECOVERY_ENV] = str(Path(tmp) / "recovery")
        try:
            loaded = time.perf_counter()
            urls = {size: _load(Path(tmp) / f"{size}.db", size, now) for size in (BIG, SMALL)}
            report.notes.append(f"loaded {BIG:,} + {SMALL} grants in {time.perf_counter() - loaded:.1f} s")
            big, small = (_Console(urls[size], loop, log) for size in (BIG, SMALL))
            consoles += [big, small]
            middles = {size: _middle_cursor(urls[size]) for size in (BIG, SMALL)}
            for label, template in CASES.items():
                paths = {size: template.format(middle=middles[size]) for size in (BIG, SMALL)}
                results = interleave({"big": _per_page(big, paths[BIG], pages),
                                      "small": _per_page(small, paths[SMALL], pages)},
                                     rounds=rounds, warmup=warmup)  # fmt: skip
                a, b = results["big"].median, results["small"].median
                report.rows.append(Row(bench=NAME, measured=f"grants list: {label} (per page)",
                                       a_label=f"{BIG:,} grants", a=a, b_label=f"{SMALL} grants", b=b, unit="ns",
                                       ratio=a / b, target=f"<= {TARGET:.1f}", passed=a / b <= TARGET))  # fmt: skip
                report.notes.append(f"{label}: {BIG:,} grants {results['big'].spread('ns')}; {SMALL} grants "
                                    f"{results['small'].spread('ns')}")  # fmt: skip
            search = interleave({"big": _per_page(big, SEARCH, max(1, pages // 4)),
                                 "small": _per_page(small, SEARCH, max(1, pages // 4))},
                                rounds=max(3, rounds // 2), warmup=1)  # fmt: skip
            report.notes.append(
                f"a name search matching nothing scans every name: {BIG:,} grants "
                f"{search['big'].spread('ns')}; {SMALL} grants {search['small'].spread('ns')}"
            )
        finally:
            for console in consoles:
                console.close()
            loop.close()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    report.seconds = time.perf_counter() - started
    return report


if __name__ == "__main__":
    standalone(run)
