"""The serve log's redaction: the cheaper processor gives exactly what `scrub` gives, and the lines are redacted."""

from __future__ import annotations

import io
import json

from hypothesis import given
from hypothesis import strategies as st

from grantkeeper._secrets import Secret
from grantkeeper.redact._core import scrub
from grantkeeper.serve.logs import _redact, configure_logging, get_logger

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
