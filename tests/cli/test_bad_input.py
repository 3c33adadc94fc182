"""Bad input found in review: each gets a typed error with what to do, never a bare exception or lost state."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from grantkeeper import ConfigurationError, GrantEvent, Keeper, Webhook
from grantkeeper.cli.main import cli
from grantkeeper.redact.tracebacks import format_exception
from tests.helpers import add_grant

KEY = "dGVzdC1rZXktZm9yLWdyYW50a2VlcGVyLXRlc3RzLTE"


@pytest.fixture
def url(tmp_path: Path, make_sim: object) -> str:
    store = f"sqlite://{tmp_path}/g.db"
    with Keeper.open(store) as keeper:
        add_grant(keeper, make_sim())  # type: ignore[operator]
    return store


@pytest.mark.parametrize("webhook", ["https://h:abc/hook", "https:///no-host"])
def test_a_malformed_webhook_url_is_a_configuration_error(url: str, webhook: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("GRANTKEEPER_WEBHOOK_URL", webhook)
    monkeypatch.setenv("GRANTKEEPER_WEBHOOK_SECRET", "a-shared-secret")
    result = CliRunner().invoke(cli, ["--store", url, "grant", "list"])
    assert result.exit_code == 3 and "GRANTKEEPER_WEBHOOK_URL" in result.stderr


def test_a_webhook_failure_of_any_kind_is_counted_not_fatal() -> None:
    """A host name IDNA cannot encode fails inside the delivery thread; the event is counted undelivered."""
    webhook = Webhook(f"http://{'a' * 70}.example/hook", secret="s3cret-value", max_tries=2, backoff=0.01)
    webhook(GrantEvent(kind="needs_reauth", grant="g", provider="p", cause="revoked_or_expired", message="m",
                       evidence={}, at=time.time(), worker="w"))  # fmt: skip
    webhook.close()
    assert (webhook.delivered, webhook.undelivered) == (0, 1)


def test_non_utf8_secret_on_stdin_is_refused(url: str) -> None:
    result = CliRunner().invoke(cli, ["--store", url, "grant", "import", "other", "--provider", "sim"],
                                input=b"\xff\xfe-not-text\n")  # fmt: skip
    assert result.exit_code == 3 and "not UTF-8" in result.stderr
    with Keeper.open(url) as keeper:
        assert [g.name for g in keeper.grants()] == ["g"]


def test_discovery_of_an_unencodable_host_is_typed(url: str) -> None:
    result = CliRunner().invoke(cli, ["--store", url, "provider", "discover", "x", "--issuer",
                                      f"https://{'a' * 70}.example", "--client-id", "c"])  # fmt: skip
    assert result.exit_code in (3, 6) and "unexpected error" not in result.stderr, result.stderr


def test_keys_generate_into_a_missing_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["keys", "generate", "--output", str(tmp_path / "missing" / "k")])
    assert result.exit_code == 3 and "folder exists" in result.stderr


def test_an_unreadable_key_file_is_a_key_error(tmp_path: Path) -> None:
    store = tmp_path / "g.db"
    (tmp_path / "g.db.key").mkdir(mode=0o700)  # a directory where the key file should be
    result = CliRunner().invoke(cli, ["--store", f"sqlite://{store}", "provider", "list"])
    assert result.exit_code == 3 and "unexpected error" not in result.stderr, result.stderr


def test_connect_refuses_a_bad_grant_name_before_any_consent(url: str) -> None:
    result = CliRunner().invoke(cli, ["--store", url, "connect", "my grant", "--provider", "sim", "--no-browser",
                                      "--timeout", "1"])  # fmt: skip
    assert result.exit_code == 3 and "Open this URL" not in result.stderr


def test_key_material_in_traceback_locals_is_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key ring is parsed as plain text before it is a Secret: a traceback with locals must not show it."""
    from grantkeeper.keys.sources import parse_ring

    with pytest.raises(ConfigurationError) as info:
        parse_ring(f"{KEY},not-a-key", origin="$GRANTKEEPER_KEY")
    assert KEY not in format_exception(info.value, with_locals=True)
