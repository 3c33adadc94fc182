"""redact: the second line of defence scrubs secrets from logs, traces and reports written by anyone."""

from __future__ import annotations

import importlib
import io
import json
import logging
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grantkeeper import Secret
from grantkeeper.redact import REDACTED, MissingExtra, RedactingFilter, scrub, scrub_text, structlog_processor

TOKEN = "eyJhbGciOiJSUzI1NiJ9.payload-value.signature-value"
Sim = Callable[..., object]


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Bearer {TOKEN}",
        f"grant_type=refresh_token&refresh_token={TOKEN}&client_id=x",
        f'{{"access_token": "{TOKEN}", "token_type": "Bearer"}}',
        f"client_secret={TOKEN}",
        f"Basic {TOKEN}",
        f"{{'id_token': '{TOKEN}'}}",
        f"[('authorization', 'Bearer {TOKEN}'), ('accept', '*/*')]",
        f"Cookie: session={TOKEN}; theme=dark",
        f"Set-Cookie: sid={TOKEN}; HttpOnly",
        f"Proxy-Authorization: Basic {TOKEN}",
        f"GET https://api.example/cb?code={TOKEN}&state=xyz",
        f"client_assertion={TOKEN}&client_assertion_type=jwt-bearer",
        f"refresh_token: {TOKEN}",
        f'{{"password": "{TOKEN}"}}',
    ],
)
def test_scrub_removes_credentials_from_text(text: str) -> None:
    """Credentials in header, form, query, JSON, repr and free-text syntax are replaced."""
    assert TOKEN not in scrub(text)
    assert REDACTED in scrub(text)


def test_ordinary_text_is_kept() -> None:
    """Words that merely share a name with a field survive where no value follows in a secret syntax."""
    for text in ("exit code: 3", "grant_type=refresh_token", "token_type Bearer", "the refresh token expired"):
        assert scrub_text(text).replace(REDACTED, "") == text.replace(REDACTED, "") or REDACTED not in scrub_text(text)
    assert scrub_text("exit code: 3") == "exit code: 3"
    assert scrub_text("grant_type=refresh_token&scope=a") == "grant_type=refresh_token&scope=a"


def test_live_secret_is_caught_anywhere_by_value() -> None:
    """A token held in a Secret is removed from text that gives no hint it is a secret."""
    held = Secret("pasted-into-prose-7f3a9c")
    assert scrub_text("user said pasted-into-prose-7f3a9c, oops") == f"user said {REDACTED}, oops"
    del held


def test_value_is_forgotten_when_no_secret_holds_it() -> None:
    """Redaction by value tracks live Secrets only (weak references): nothing is kept after they go."""
    import gc

    from grantkeeper._secrets import live_values_in

    first, second = Secret("short-lived-value-1234"), Secret("short-lived-value-1234")
    assert live_values_in("x short-lived-value-1234 y") == ["short-lived-value-1234"]
    del first
    gc.collect()
    assert live_values_in("x short-lived-value-1234 y") == ["short-lived-value-1234"]  # still held by one
    del second
    gc.collect()
    assert live_values_in("x short-lived-value-1234 y") == []


def test_overlapping_live_values_are_all_removed() -> None:
    """Values sharing a prefix, or one inside another, are all found; the longest is replaced first."""
    held = [Secret("prefix00-long-token-value"), Secret("prefix00-other"), Secret("long-token")]
    text = "a prefix00-long-token-value b prefix00-other c long-token"
    assert scrub_text(text) == f"a {REDACTED} b {REDACTED} c {REDACTED}"
    del held


def test_scrub_copies_nested_structures_without_mutating() -> None:
    """Sensitive keys at any depth are replaced in a copy; the input is untouched."""
    event = {"event": "call", "headers": {"Authorization": f"Bearer {TOKEN}"}, "body": [{"refresh_token": TOKEN}],
             "secret": Secret(TOKEN)}  # fmt: skip
    cleaned = scrub(event)
    assert TOKEN not in repr(cleaned)
    assert event["body"][0]["refresh_token"] == TOKEN  # type: ignore[index]


# --- hypothesis: every syntax, random surroundings -----------------------------------------------------------

# RFC 6750 b64token characters, as access and refresh tokens are; 8+ characters (shorter is not a token).
b64token = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/", min_size=8,
                   max_size=80).filter(lambda t: t.strip("=") == t)  # fmt: skip
vschar_token = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=8, max_size=80)
field = st.sampled_from(["access_token", "refresh_token", "id_token", "code", "client_secret", "assertion",
                         "client_assertion", "password"])  # fmt: skip
noise = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


def _survives(make: Callable[[str], str], token: str, shown: str | None = None) -> bool:
    """Whether `shown` (the token as its syntax writes it) is in the scrubbed `make(token)` more often than in
    the scrubbed `make("Z")`: the same text with a neutral value, so random surroundings that happen to
    contain the token, or field names that contain it, do not count."""
    shown = token if shown is None else shown
    return scrub_text(make(token)).count(shown) > scrub_text(make("Z")).count(shown)


@settings(max_examples=300, deadline=None)
@given(name=field, token=vschar_token, before=noise, after=noise, others=st.dictionaries(
    st.sampled_from(["grant_type", "scope", "state", "client_id"]), noise, max_size=3))  # fmt: skip
def test_form_encoded_field_never_survives(name: str, token: str, before: str, after: str,
                                           others: dict[str, str]) -> None:  # fmt: skip
    """Any VSCHAR token, form-encoded under any sensitive name among other fields, is removed."""
    encoded = urlencode({name: token}).split("=", 1)[1]
    assert not _survives(lambda t: f"{before} {urlencode({**others, name: t})} {after}", token, encoded)


@settings(max_examples=300, deadline=None)
@given(name=field, token=vschar_token, before=noise, after=noise, indent=st.sampled_from([None, 2]))
def test_json_field_never_survives(name: str, token: str, before: str, after: str, indent: int | None) -> None:
    """Any VSCHAR token as a JSON string value under any sensitive name is removed, escapes included."""

    def make(t: str) -> str:
        return before + json.dumps({"token_type": "Bearer", name: t, "expires_in": 3600}, indent=indent) + after

    assert not _survives(make, token, json.dumps(token)[1:-1])


@settings(max_examples=300, deadline=None)
@given(token=b64token, scheme=st.sampled_from(["Bearer", "bearer", "Basic", "DPoP"]),
       header=st.sampled_from(["Authorization", "authorization", "Proxy-Authorization"]),
       before=noise, after=noise)  # fmt: skip
def test_authorization_header_never_survives(token: str, scheme: str, header: str, before: str, after: str) -> None:
    """Authorization-style header lines and the scheme credential itself are removed."""
    assert not _survives(lambda t: f"{before}\n{header}: {scheme} {t}\n{after}", token)
    assert not _survives(lambda t: f"{before} {scheme} {t} {after}", token)


@settings(max_examples=200, deadline=None)
@given(token=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters=";,"),
                     min_size=8, max_size=60),
       header=st.sampled_from(["Cookie", "Set-Cookie", "cookie"]), after=noise)  # fmt: skip
def test_cookie_headers_never_survive(token: str, header: str, after: str) -> None:
    assert not _survives(lambda t: f"{header}: session={t}; path=/\n{after}", token)


@settings(max_examples=200, deadline=None)
# A token that is part of the marker itself ("[redacte") is found again in the marker that replaced it.
@given(token=st.text(min_size=8, max_size=60).filter(lambda t: t.strip() == t and t not in REDACTED),
       before=noise, after=noise)  # fmt: skip
def test_live_secret_never_survives_in_any_text(token: str, before: str, after: str) -> None:
    """A value held by a live Secret is removed from any surrounding text, whatever its characters."""
    held = Secret(token)
    assert not _survives(lambda t: before + t + after, token)
    del held


@settings(max_examples=150, deadline=None)
@given(name=field, token=vschar_token, before=noise,
       syntax=st.sampled_from(["form", "json", "header", "extra"]))  # fmt: skip
def test_logging_filter_never_lets_a_token_through(name: str, token: str, before: str, syntax: str) -> None:
    """Through a real logger, handler and RedactingFilter: a token in a %-argument (form, JSON or header
    syntax) or in an `extra=` field never reaches the formatted output."""

    def render(value: str) -> str:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(message)s %(detail)s"))
        handler.addFilter(RedactingFilter())
        logger = logging.getLogger("test.redact.property")
        logger.addHandler(handler)
        logger.propagate = False
        try:
            if syntax == "extra":
                logger.warning("%s", before, extra={"detail": {name: value}})
            else:
                argument = {"form": urlencode({name: value}), "json": json.dumps({name: value}),
                            "header": f"Authorization: Bearer {value}"}[syntax]  # fmt: skip
                logger.warning("%s %s", before, argument, extra={"detail": ""})
        finally:
            logger.removeHandler(handler)
            logger.propagate = True
        return stream.getvalue()

    shown = {"form": urlencode({name: token}).split("=", 1)[1], "json": json.dumps(token)[1:-1]}.get(syntax, token)
    if syntax == "header":
        token = shown = "".join(c for c in token if c.isalnum()) or "abcdefgh"
        shown = token
    assert render(token).count(shown) <= render("Z").count(shown)


# --- stdlib logging --------------------------------------------------------------------------------------


def test_logging_filter_scrubs_message_args_and_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """A record's message, %-args and exception text are all scrubbed before any handler formats them."""
    logger = logging.getLogger("test.redact")
    caplog.handler.addFilter(RedactingFilter())
    try:
        raise ValueError(f"refresh_token={TOKEN}")
    except ValueError:
        logger.exception("posting %s", f"Authorization: Bearer {TOKEN}")
    assert TOKEN not in caplog.text
    assert REDACTED in caplog.text


def test_logging_filter_scrubs_extra_fields() -> None:
    """`extra=` fields are scrubbed by name and by content, so a JSON formatter cannot print them."""
    record = logging.makeLogRecord({"msg": "call", "refresh_token": TOKEN, "request": {"client_secret": TOKEN},
                                    "note": f"Bearer {TOKEN}", "count": 3})  # fmt: skip
    assert RedactingFilter().filter(record)
    assert record.refresh_token == REDACTED
    assert record.request == {"client_secret": REDACTED}
    assert TOKEN not in record.note
    assert record.count == 3


def test_logging_filter_without_extras_scrubs_the_rest() -> None:
    """``extras=False`` (a formatter that never writes `extra=` fields) leaves them; the message is still scrubbed."""
    record = logging.makeLogRecord({"msg": "call %s", "args": (f"Bearer {TOKEN}",), "refresh_token": TOKEN})
    assert RedactingFilter(extras=False).filter(record)
    assert TOKEN not in record.getMessage() and record.refresh_token == TOKEN


def test_logging_filter_survives_arguments_that_do_not_fit() -> None:
    """A record whose %-arguments do not match its format is still scrubbed, not an exception in the caller."""
    record = logging.makeLogRecord({"msg": "one %s two %s", "args": (f"refresh_token={TOKEN}",)})
    assert RedactingFilter().filter(record)
    assert TOKEN not in record.getMessage() and "one %s two %s" in record.getMessage()


def test_logging_filter_scrubs_stack_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.handler.addFilter(RedactingFilter())
    refresh_token = TOKEN  # noqa: F841  (a local with the token, as in a real frame)
    logging.getLogger("test.redact").warning("with stack: code=%s", TOKEN, stack_info=True)
    assert TOKEN not in caplog.text


def test_structlog_processor_returns_scrubbed_copy() -> None:
    """The processor has structlog's signature and returns a scrubbed event dict."""
    out = structlog_processor(None, "info", {"event": "x", "access_token": TOKEN})
    assert out == {"event": "x", "access_token": REDACTED}


# --- structlog ---------------------------------------------------------------------------------------------


def test_structlog_pipeline_renders_no_secret() -> None:
    """Through a real structlog pipeline (exception formatting, JSON rendering) no token is rendered."""
    import structlog

    from grantkeeper.redact.structlog import RedactingProcessor

    output = io.StringIO()
    logger = structlog.wrap_logger(
        structlog.PrintLogger(file=output),
        processors=[structlog.processors.format_exc_info, RedactingProcessor(), structlog.processors.JSONRenderer()],
    )
    try:
        raise RuntimeError(f"provider said access_token={TOKEN}")
    except RuntimeError:
        logger.exception("failed", headers={"Authorization": f"Bearer {TOKEN}"}, body=f"refresh_token={TOKEN}")
    text = output.getvalue()
    assert TOKEN not in text
    assert json.loads(text)["headers"]["Authorization"] == REDACTED


# --- httpx -------------------------------------------------------------------------------------------------


def test_httpx_event_hooks_log_no_credentials(make_sim: Sim, caplog: pytest.LogCaptureFixture) -> None:
    """A real request with an Authorization header and a token in the query is logged without either."""
    from grantkeeper.redact.httpx import event_hooks

    sim = make_sim()
    caplog.set_level(logging.DEBUG, logger="grantkeeper.http")
    with httpx.Client(event_hooks=event_hooks()) as client:
        response = client.get(f"{sim.base_url}/resource?access_token={TOKEN}",  # type: ignore[attr-defined]
                              headers={"Authorization": f"Bearer {TOKEN}", "Cookie": f"s={TOKEN}"})  # fmt: skip
    assert response.status_code == 401
    assert "http request: GET" in caplog.text and "-> 401" in caplog.text
    assert TOKEN not in caplog.text


def test_httpx_transport_wrapper_logs_no_credentials(make_sim: Sim, caplog: pytest.LogCaptureFixture) -> None:
    """The transport wrapper logs exchanges and transport errors; never a credential or password."""
    from grantkeeper.redact.httpx import RedactingLogTransport

    sim = make_sim()
    caplog.set_level(logging.DEBUG, logger="grantkeeper.http")
    base = sim.base_url.replace("http://", f"http://user:{TOKEN}@")  # type: ignore[attr-defined]
    with httpx.Client(transport=RedactingLogTransport(httpx.HTTPTransport())) as client:
        client.post(f"{base}/token", data={"grant_type": "refresh_token", "refresh_token": TOKEN})
        with pytest.raises(httpx.ConnectError):
            client.get(f"http://127.0.0.1:1/?code={TOKEN}")
    assert "-> 4" in caplog.text and "http error: GET" in caplog.text
    assert TOKEN not in caplog.text


async def _async_exchange(url: str) -> int:
    from grantkeeper.redact.httpx import AsyncRedactingLogTransport, async_event_hooks

    transport = AsyncRedactingLogTransport(httpx.AsyncHTTPTransport())
    async with httpx.AsyncClient(transport=transport, event_hooks=async_event_hooks()) as client:
        response = await client.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    return response.status_code


def test_async_httpx_helpers_log_no_credentials(make_sim: Sim, caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    sim = make_sim()
    caplog.set_level(logging.DEBUG, logger="grantkeeper.http")
    assert asyncio.run(_async_exchange(f"{sim.base_url}/resource")) == 401  # type: ignore[attr-defined]
    assert caplog.text.count("http request: GET") == 2
    assert TOKEN not in caplog.text


# --- tracebacks ----------------------------------------------------------------------------------------------


def _fails_with_token_in_locals(token: str) -> None:
    body = f"grant_type=refresh_token&refresh_token={token}"
    refresh_token = token
    raise ValueError(f"bad response for {len(body)} bytes, first token {refresh_token[:0]}")


def test_traceback_with_locals_is_scrubbed() -> None:
    """Rendered with local variables, a frame holding the token shows neither the token nor the form body."""
    from grantkeeper.redact.tracebacks import format_exception

    try:
        _fails_with_token_in_locals(TOKEN)
    except ValueError as exc:
        import traceback

        raw = "".join(traceback.TracebackException.from_exception(exc, capture_locals=True).format())
        assert TOKEN in raw  # the hazard is real
        text = format_exception(exc, with_locals=True)
    assert TOKEN not in text
    assert "refresh_token = " in text and REDACTED in text


def test_chained_exceptions_are_scrubbed() -> None:
    from grantkeeper.redact.tracebacks import format_exception

    try:
        try:
            _fails_with_token_in_locals(TOKEN)
        except ValueError as inner:
            raise RuntimeError(f"wrapped: client_secret={TOKEN}") from inner
    except RuntimeError as exc:
        text = format_exception(exc, with_locals=True)
    assert "The above exception was the direct cause" in text
    assert TOKEN not in text


def test_excepthook_prints_scrubbed_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from grantkeeper.redact.tracebacks import install_excepthook

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    install_excepthook(with_locals=True)
    try:
        _fails_with_token_in_locals(TOKEN)
    except ValueError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    err = capsys.readouterr().err
    assert "ValueError" in err and TOKEN not in err


def test_scrub_locals_survives_broken_reprs() -> None:
    from grantkeeper.redact.tracebacks import scrub_locals

    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError(TOKEN)

    safe = scrub_locals({"code": TOKEN, "other": Broken(), "note": f"Bearer {TOKEN}", "tokens": [TOKEN],
                         "new_client_secret_value": TOKEN, "count": 3})  # fmt: skip
    assert safe["code"] == safe["tokens"] == safe["new_client_secret_value"] == REDACTED
    assert safe["count"] == "3"
    assert safe["other"].startswith("<unrepresentable Broken")
    assert TOKEN not in repr(safe)


# --- OpenTelemetry -------------------------------------------------------------------------------------------


def test_otel_exported_spans_carry_no_secret() -> None:
    """Through a real TracerProvider, the exporter behind the redacting processor sees scrubbed spans."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import Status, StatusCode

    from grantkeeper.redact.otel import RedactingSpanProcessor

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(RedactingSpanProcessor(SimpleSpanProcessor(exporter)))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span(f"POST /token?code={TOKEN}") as span:
        span.set_attribute("http.request.header.authorization", f"Bearer {TOKEN}")
        span.set_attribute("http.url", f"https://x/cb?code={TOKEN}&state=1")
        span.set_attribute("app.refresh_token", TOKEN)
        span.set_attribute("http.status_code", 200)
        span.record_exception(ValueError(f"refresh_token={TOKEN}"))
        span.set_status(Status(StatusCode.ERROR, f"Bearer {TOKEN}"))
    provider.shutdown()
    (exported,) = exporter.get_finished_spans()
    text = repr((exported.name, dict(exported.attributes or {}), [(e.name, dict(e.attributes or {}))
                 for e in exported.events], exported.status.description))  # fmt: skip
    assert TOKEN not in text
    assert exported.attributes is not None and exported.attributes["http.status_code"] == 200
    assert exported.attributes["app.refresh_token"] == REDACTED


# --- Sentry --------------------------------------------------------------------------------------------------


def _sentry_payload(**hooks: Any) -> str:
    """What a real sentry_sdk client would send for one breadcrumb and one exception whose frame holds TOKEN.

    Frame variables are switched on explicitly: sentry-sdk 2 calls the option ``include_local_variables``,
    sentry-sdk 3 replaced it with ``data_collection["stack_frame_variables"]``."""
    import sentry_sdk
    from sentry_sdk.transport import Transport

    sent: list[bytes] = []

    class Capture(Transport):
        def capture_envelope(self, envelope: Any) -> None:
            sent.append(envelope.serialize())

    major = int(sentry_sdk.VERSION.split(".")[0])
    frame_variables: dict[str, Any] = (
        {"include_local_variables": True} if major < 3 else {"data_collection": {"stack_frame_variables": True}}
    )
    client = sentry_sdk.Client(dsn="https://public@sentry.invalid/1", transport=Capture,
                               default_integrations=False, **frame_variables, **hooks)  # fmt: skip
    with sentry_sdk.new_scope() as scope:
        scope.set_client(client)
        scope.add_breadcrumb(message=f"POST /token refresh_token={TOKEN}", category="http")
        try:
            _fails_with_token_in_locals(TOKEN)
        except ValueError as exc:
            event_id = scope.capture_exception(exc)
    assert event_id is not None
    client.flush()
    client.close()
    payload = b"".join(sent).decode()
    assert "ValueError" in payload and "POST /token" in payload and "_fails_with_token_in_locals" in payload
    return payload


def test_sentry_events_carry_no_secret() -> None:
    """A real sentry_sdk client with before_send/before_breadcrumb: the envelope it would send is clean, frame
    variables and breadcrumbs included. Without the callbacks the same envelope carries the token, so the
    capture really holds what the callbacks must scrub (whatever the installed SDK scrubs by itself)."""
    from grantkeeper.redact.sentry import before_breadcrumb, before_send

    raw = _sentry_payload()
    event = next(json.loads(line) for line in raw.splitlines() if '"exception"' in line)
    frame = event["exception"]["values"][-1]["stacktrace"]["frames"][-1]
    assert TOKEN in json.dumps(frame["vars"]) and TOKEN in json.dumps(event["breadcrumbs"])
    assert TOKEN not in _sentry_payload(before_send=before_send, before_breadcrumb=before_breadcrumb)


# --- optional libraries ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("helper", "library", "extra"),
    [
        ("grantkeeper.redact.structlog", "structlog", "structlog"),
        ("grantkeeper.redact.sentry", "sentry_sdk", "sentry"),
        ("grantkeeper.redact.otel", "opentelemetry", "otel"),
    ],
)
def test_helper_without_its_library_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, helper: str, library: str, extra: str
) -> None:
    """Without the library, importing the helper raises MissingExtra (an ImportError) with the pip line."""
    for name in [m for m in sys.modules if m in (library, helper) or m.startswith(library + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, library, None)  # makes `import library` fail as if not installed
    with pytest.raises(MissingExtra, match=rf"pip install 'grantkeeper\[{extra}\]'") as info:
        importlib.import_module(helper)
    assert isinstance(info.value, ImportError)


def test_core_imports_no_optional_library() -> None:
    """`import grantkeeper` and `grantkeeper.redact` load none of structlog, sentry_sdk, opentelemetry."""
    import subprocess

    code = ("import sys, grantkeeper, grantkeeper.redact, grantkeeper.redact.httpx, grantkeeper.redact.tracebacks;"
            "print(sorted(m for m in ('structlog', 'sentry_sdk', 'opentelemetry') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_log_handler_redacts(capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's own stderr log handler carries the filter: whatever is logged through it is scrubbed."""
    from grantkeeper.cli._session import Session

    session = Session()
    session.configure_logging(True)
    try:
        logging.getLogger("grantkeeper.test").warning("posting refresh_token=%s", TOKEN)
    finally:
        session.close_logging()
    err = capsys.readouterr().err
    assert "posting refresh_token=" in err and TOKEN not in err


@pytest.mark.parametrize("words", ["BASIC Bearer", "Bearer basic", "DPoP Bearer", "bearer bearer"])
def test_a_scheme_word_is_not_taken_for_the_credential(words: str) -> None:
    """Found by the property test above: in "BASIC Bearer <token>" the word "Bearer" was redacted as Basic's
    credential and the token survived."""
    assert scrub_text(f"text {words} 0000000000000000 more") == f"text {words} [redacted] more"
