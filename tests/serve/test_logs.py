"""The serve log's redaction: the cheaper processor gives exactly what `scrub` gives, and the lines are redacted;
`RequestLog` writes the line the structlog call would, redacted the same way."""

from __future__ import annotations

import io
import json
import logging

import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from grantkeeper._secrets import Secret
from grantkeeper.redact import RedactingFilter
from grantkeeper.redact._core import scrub, scrub_text
from grantkeeper.redact.structlog import RedactingProcessor
from grantkeeper.serve.logs import RequestLog, _redact, configure_logging, get_logger

LIVE = Secret("live-secret-value-0123456789")
values = st.one_of(
    st.text(st.sampled_from("abcAZ09_./{}@-=:,'\" \tBearer"), max_size=40),
    st.sampled_from(
        [
            "/v1/grants/bench/token",
            "Bearer abc.def",
            "refresh_token=xyz",
            f"/v1/{LIVE.reveal()}/x",
            LIVE.reveal(),
            "GET",
            "a" * 7,
            "code=3",
            "{name}",
        ]
    ),
    st.integers(),
    st.none(),
)


@given(event=st.dictionaries(st.sampled_from(["path", "route", "api_key", "Authorization", "token", "x"]), values))
def test_the_processor_gives_what_scrub_gives(event: dict[str, object]) -> None:
    assert _redact(None, "info", dict(event)) == scrub(event)


def test_request_lines_are_redacted() -> None:
    out = io.StringIO()
    configure_logging("info", stream=out)
    try:
        get_logger().info("request", path=f"/v1/grants/{LIVE.reveal()}/token", route="/v1/grants/{name}/token",
                          detail="Bearer abcdefghijkl", authorization="whatever")  # fmt: skip
    finally:
        configure_logging("info")
    line = json.loads(out.getvalue())
    assert LIVE.reveal() not in out.getvalue() and "abcdefghijkl" not in out.getvalue()
    assert line["route"] == "/v1/grants/{name}/token" and line["authorization"] == "[redacted]"
    assert line["event"] == "request" and line["level"] == "info" and line["timestamp"].endswith("Z")


def _lines(level: str, write: object) -> list[dict[str, object]]:
    out = io.StringIO()
    configure_logging(level, stream=out)
    try:
        write()  # type: ignore[operator]
    finally:
        configure_logging("info")
    return [json.loads(line) for line in out.getvalue().splitlines()]


@given(path=values, api_key=st.one_of(st.none(), values), method=st.sampled_from(["GET", "POST", LIVE.reveal()]))
def test_the_request_line_is_the_structlog_line(path: object, api_key: object, method: str) -> None:
    fields = {"method": method, "path": str(path), "route": "/v1/grants/{name}/token", "status": 404,
              "api_key": None if api_key is None else str(api_key), "outcome": "unknown_grant", "ms": 1.5}  # fmt: skip
    fast = _lines("info", lambda: RequestLog().write(**fields))  # type: ignore[arg-type]
    slow = _lines("info", lambda: get_logger().info("request", **fields))
    assert len(fast) == len(slow) == 1
    stamps = fast[0].pop("timestamp"), slow[0].pop("timestamp")
    assert all(isinstance(t, str) and t.endswith("Z") for t in stamps)
    assert list(fast[0].items()) == list(slow[0].items())  # same keys, same order, same (redacted) values
    assert LIVE.reveal() not in json.dumps(fast[0])


def test_the_request_line_follows_the_level() -> None:
    assert _lines("warning", lambda: RequestLog().write(method="GET", path="/livez", route="/livez", status=200,
                                                        api_key=None, outcome=None, ms=0.1)) == []  # fmt: skip


@given(path=values, api_key=st.one_of(st.none(), values), outcome=st.one_of(st.none(), st.sampled_from(["forbidden"])),
       ms=st.floats(min_value=0, max_value=1e6))  # fmt: skip
def test_the_request_line_is_byte_for_byte_what_json_dumps_gives(path: object, api_key: object, outcome: str | None,
                                                                 ms: float) -> None:  # fmt: skip
    out = io.StringIO()
    configure_logging("info", stream=out)
    try:
        RequestLog().write(method="GET", path=str(path), route="/v1/proxy/{name}/{path:path}", status=200,
                           api_key=None if api_key is None else str(api_key), outcome=outcome, ms=ms)  # fmt: skip
    finally:
        configure_logging("info")
    raw = out.getvalue().rstrip("\n")
    assert raw == json.dumps(json.loads(raw))


def _old_handler(stream: io.StringIO) -> logging.Handler:
    """serve's stdlib handler as it was: the filter scrubbing extras too, the formatter scrubbing the whole line
    again (the message a second time) with `RedactingProcessor`."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, structlog.contextvars.merge_contextvars,
                           structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True),
                           structlog.processors.format_exc_info],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, RedactingProcessor(),
                    structlog.processors.JSONRenderer()],
    ))  # fmt: skip
    return handler


words = st.sampled_from(["refresh_token=", "Authorization: ", "'code': ", "Bearer ", "token ", LIVE.reveal(), " ", ",",
                         "fp_0123456789abcdef", "grant 'crm'", "%s", "{", '"', "="])  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(message=st.lists(st.one_of(words, st.text(max_size=8)), max_size=10).map("".join),
       bound=st.dictionaries(st.sampled_from(["request_id", "token", "grant", "event", "level"]), words, max_size=2),
       extra=st.dictionaries(st.sampled_from(["grantkeeper", "detail"]), words, max_size=2),
       name=st.sampled_from(["grantkeeper", "grantkeeper.engine", "uvicorn.error"]))  # fmt: skip
def test_the_stdlib_line_is_the_line_the_double_scrub_wrote(message: str, bound: dict[str, str],
                                                           extra: dict[str, str], name: str) -> None:  # fmt: skip
    """Scrubbing the message once (in the filter) and not scrubbing extras the formatter never writes leaves every
    line as it was, but for the message: scrubbed once, where the old chain scrubbed it twice (and a second pass
    could mangle a first pass's marker: ``'code': [redacted]`` became ``'code': [redacted]]``)."""
    new, old = io.StringIO(), io.StringIO()
    configure_logging("info", stream=new)
    logger = logging.getLogger(name)
    structlog.contextvars.bind_contextvars(**bound)
    try:
        logger.info(message, extra=extra)
        logger.handlers = [_old_handler(old)] if name != "grantkeeper.engine" else []
        if name == "grantkeeper.engine":  # propagates to "grantkeeper"
            logging.getLogger("grantkeeper").handlers = [_old_handler(old)]
        logger.info(message, extra=extra)
    finally:
        structlog.contextvars.clear_contextvars()
        configure_logging("info")
    lines = [json.loads(out.getvalue()) for out in (new, old)]
    for line in lines:
        assert isinstance(line.pop("timestamp"), str)
    assert lines[0].pop("event") == scrub_text(message) and lines[1].pop("event") == scrub_text(scrub_text(message))
    assert list(lines[0].items()) == list(lines[1].items())
    assert LIVE.reveal() not in new.getvalue()


def test_a_stdlib_records_traceback_is_in_its_line_redacted() -> None:
    """A library record logged with an exception (the scheduler's "planning a grant failed") keeps its traceback,
    as the line's ``exception``, scrubbed: the filter renders it, and the formatter used to drop that rendering."""

    def fails() -> None:
        token = LIVE.reveal()
        raise ValueError(f"refresh_token={token}")

    def log() -> None:
        try:
            fails()
        except ValueError:
            logging.getLogger("grantkeeper").exception("planning failed")

    lines = _lines("info", log)
    assert len(lines) == 1 and lines[0]["event"] == "planning failed"
    exception = lines[0]["exception"]
    assert isinstance(exception, str) and "Traceback" in exception and "in fails" in exception
    assert "ValueError: refresh_token=[redacted]" in exception and LIVE.reveal() not in json.dumps(lines)
