"""redact: the second line of defence scrubs secrets from logs written by anyone."""

from __future__ import annotations

import logging

import pytest

from grantkeeper import Secret
from grantkeeper.redact import REDACTED, RedactingFilter, scrub, structlog_processor

TOKEN = "eyJhbGciOiJSUzI1NiJ9.payload-value.signature-value"


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Bearer {TOKEN}",
        f"grant_type=refresh_token&refresh_token={TOKEN}&client_id=x",
        f'{{"access_token": "{TOKEN}", "token_type": "Bearer"}}',
        f"client_secret={TOKEN}",
        f"Basic {TOKEN}",
    ],
)
def test_scrub_removes_credentials_from_text(text: str) -> None:
    """Bearer/Basic values and token fields inside strings are replaced."""
    assert TOKEN not in scrub(text)
    assert REDACTED in scrub(text)


def test_scrub_copies_nested_structures_without_mutating() -> None:
    """Sensitive keys at any depth are replaced in a copy; the input is untouched."""
    event = {"event": "call", "headers": {"Authorization": f"Bearer {TOKEN}"}, "body": [{"refresh_token": TOKEN}],
             "secret": Secret(TOKEN)}  # fmt: skip
    cleaned = scrub(event)
    assert TOKEN not in repr(cleaned)
    assert event["body"][0]["refresh_token"] == TOKEN  # type: ignore[index]


def test_logging_filter_scrubs_message_args_and_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """A record's message, %-args and exception text are all scrubbed before any handler formats them."""
    logger = logging.getLogger("test.redact")
    handler = logging.StreamHandler()
    caplog.handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    try:
        raise ValueError(f"refresh_token={TOKEN}")
    except ValueError:
        logger.exception("posting %s", f"Authorization: Bearer {TOKEN}")
    logger.removeHandler(handler)
    assert TOKEN not in caplog.text
    assert REDACTED in caplog.text


def test_structlog_processor_returns_scrubbed_copy() -> None:
    """The processor has structlog's signature and returns a scrubbed event dict."""
    out = structlog_processor(None, "info", {"event": "x", "access_token": TOKEN})
    assert out == {"event": "x", "access_token": REDACTED}
