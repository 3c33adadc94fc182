"""I6: no token or client secret reaches logs (any level, any logger), errors, reprs or status output,
along every failure path of the refresh transaction."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from grantkeeper import GrantkeeperError, Keeper, Secret
from grantkeeper.testing import DropAfterRotate, HttpError, Malformed
from tests.helpers import FAST_POLICY, add_grant, files_bytes, provider_for

Sim = Callable[..., object]


def _scenarios(keeper: Keeper, sim: object) -> list[object]:
    """Drive success and every failure class; return everything a caller could print."""
    seen: list[object] = []

    def attempt(fn: Callable[[], object]) -> None:
        try:
            seen.append(fn())
        except GrantkeeperError as exc:
            seen.extend([str(exc), repr(exc), exc.evidence(), exc.args])

    add_grant(keeper, sim, grace=30)
    attempt(lambda: keeper.refresh("g"))
    for fault in (HttpError(503), DropAfterRotate(), Malformed("html", rotate=True), Malformed("wrong_types")):
        sim.inject(fault)  # type: ignore[attr-defined]
        attempt(lambda: keeper.refresh("g", force=True))
    sim.inject(HttpError(500), times=10)  # type: ignore[attr-defined]
    attempt(lambda: keeper.refresh("g", force=True))
    keeper.add_provider(dataclasses.replace(provider_for(sim, grace=30), client_secret=Secret("wrong-client-secret")))
    attempt(lambda: keeper.refresh("g", force=True))
    keeper.add_provider(provider_for(sim, grace=30))
    grant = keeper.store.get_grant("g")
    sim.revoke_family(grant.refresh_token.reveal())  # type: ignore[attr-defined, union-attr]
    attempt(lambda: keeper.refresh("g", force=True))
    attempt(lambda: bool(keeper.access_token("g")))  # the one call whose job is to return a token
    seen.append(keeper.status("g"))
    seen.append(json.dumps(keeper.status("g").as_dict()))
    seen.append(keeper.store.get_grant("g"))
    seen.append(keeper.store.list_attempts("g"))
    return seen


def test_no_secret_in_logs_errors_reprs_or_files(
    tmp_path: Path, make_sim: Sim, caplog: pytest.LogCaptureFixture
) -> None:
    """Every token the provider issued and the client secret are absent from all captured output and from
    every file the store wrote, whatever happened."""
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    sim = make_sim(reuse_grace=30)
    with Keeper.open(f"sqlite://{tmp_path}/s.db", policy=FAST_POLICY) as keeper:
        seen = _scenarios(keeper, sim)
        text = caplog.text + "\n".join(repr(x) + str(x) for x in seen)
    secrets = set(sim.issued_tokens()) | {sim.client_secret, "wrong-client-secret"}  # type: ignore[attr-defined]
    assert len(secrets) > 5
    leaked = [s for s in secrets if s in text]
    assert leaked == []
    on_disk = files_bytes(tmp_path)
    assert [s for s in secrets if s.encode() in on_disk] == []
    assert "lost_in_flight" in text or "reuse_detected" in text or "revoked_or_expired" in text


@pytest.mark.postgres
def test_no_secret_in_logs_errors_or_database_on_postgres(
    pg_url: str, tmp_path: Path, make_sim: Sim, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same scenarios on the PostgreSQL store (psycopg's logs and errors included): no token or client
    secret in any output, in any table's text, or in the host's recovery files."""
    import psycopg

    from grantkeeper.stores import open_store
    from tests.conftest import TEST_KEY

    monkeypatch.setenv("GRANTKEEPER_KEY", TEST_KEY)
    monkeypatch.setenv("GRANTKEEPER_RECOVERY_DIR", str(tmp_path / "recovery"))
    open_store(pg_url, migrate=True).close()
    store_url = pg_url
    caplog.set_level(logging.DEBUG)
    sim = make_sim(reuse_grace=30)
    with Keeper.open(store_url, policy=FAST_POLICY) as keeper:
        seen = _scenarios(keeper, sim)
        text = caplog.text + "\n".join(repr(x) + str(x) for x in seen)
    with psycopg.connect(store_url) as conn:
        for table in ("grants", "providers", "attempts", "leases", "meta"):
            text += conn.execute(f"SELECT coalesce(string_agg(t::text, ''), '') FROM {table} t").fetchone()[0]
    secrets = set(sim.issued_tokens()) | {sim.client_secret, "wrong-client-secret"}  # type: ignore[attr-defined]
    assert [s for s in secrets if s in text] == []
    assert [s for s in secrets if s.encode() in files_bytes(tmp_path)] == []
