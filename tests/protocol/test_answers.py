"""interpret(): every token-endpoint answer becomes Success, OAuthFailure, Transient or Malformed (I7, I6)."""

from __future__ import annotations

import json
import re
import string
from datetime import UTC, datetime
from email.utils import format_datetime
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from grantkeeper._secrets import Secret
from grantkeeper.model import Attempt, AttemptState, Grant, GrantState
from grantkeeper.protocol.answers import (
    MAX_BODY_BYTES,
    MAX_EXPIRES_IN,
    HttpReply,
    Malformed,
    OAuthFailure,
    Success,
    Transient,
    interpret,
    parse_retry_after,
)
from grantkeeper.protocol.classify import classify_other

NOW = 1_700_000_000.0
ACCESS = "AT.eyJhbGciOiJSUzI1NiJ9.access-token-value-0123456789"
REFRESH = "RT-refresh-token-value-abcdefghijklmnopqrstuvwxyz"
JSON = {"content-type": "application/json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}
_TOKENISH_RUN = re.compile(r"[A-Za-z0-9\-_.~+/=]{20,}")


def reply(status: int, body: object, headers: dict[str, str] | None = None, *, truncated: bool = False) -> HttpReply:
    """A reply whose body is `body` as JSON, or as-is when it is already bytes or str."""
    if isinstance(body, bytes):
        raw = body
    elif isinstance(body, str):
        raw = body.encode()
    else:
        raw = json.dumps(body).encode()
    return HttpReply(status, dict(JSON if headers is None else headers), raw, truncated)


def ok(**fields: object) -> HttpReply:
    """A 200 JSON reply with an access token plus `fields` (a field set to None is left out)."""
    body: dict[str, object] = {"access_token": ACCESS, "token_type": "Bearer", "expires_in": 3600}
    body.update(fields)
    return reply(200, {k: v for k, v in body.items() if v is not None})


def success(r: HttpReply) -> Success:
    result = interpret(r, NOW)
    assert isinstance(result, Success), result
    return result


def malformed(r: HttpReply) -> Malformed:
    result = interpret(r, NOW)
    assert isinstance(result, Malformed), result
    return result


def failure(r: HttpReply) -> OAuthFailure:
    result = interpret(r, NOW)
    assert isinstance(result, OAuthFailure), result
    return result


def transient(r: HttpReply) -> Transient:
    result = interpret(r, NOW)
    assert isinstance(result, Transient), result
    return result


# --- valid responses ---------------------------------------------------------------------------------------


def test_success_carries_access_and_refresh_tokens() -> None:
    """A 200 with access and refresh tokens yields both, as Secrets with the body's values."""
    ts = success(ok(refresh_token=REFRESH)).token_set
    assert isinstance(ts.access_token, Secret)
    assert ts.access_token.reveal() == ACCESS
    assert ts.refresh_token is not None
    assert ts.refresh_token.reveal() == REFRESH


def test_success_without_refresh_token_has_none() -> None:
    """A 200 without refresh_token (non-rotating provider) yields refresh_token None."""
    assert success(ok()).token_set.refresh_token is None


def test_empty_refresh_token_is_treated_as_absent() -> None:
    """An empty refresh_token string means "keep the current one", i.e. None."""
    assert success(ok(refresh_token="")).token_set.refresh_token is None


def test_scope_string_is_split_on_whitespace() -> None:
    """A space-separated scope string becomes a tuple of scopes."""
    assert success(ok(scope="read  write\tadmin")).token_set.scope == ("read", "write", "admin")


def test_scope_list_of_strings_is_accepted() -> None:
    """A JSON list of scope strings becomes a tuple of scopes."""
    assert success(ok(scope=["read", "write"])).token_set.scope == ("read", "write")


def test_missing_scope_is_none() -> None:
    """No scope field means scope None (unchanged), not an empty grant of scopes."""
    assert success(ok()).token_set.scope is None


@pytest.mark.parametrize("token_type", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_token_type_is_case_insensitive(token_type: str) -> None:
    """token_type "bearer" in any case is accepted and normalised to "Bearer"."""
    assert success(ok(token_type=token_type)).token_set.token_type == "Bearer"


def test_missing_token_type_is_bearer() -> None:
    """A response without token_type is taken as Bearer."""
    assert success(ok(token_type=None)).token_set.token_type == "Bearer"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(3600, 3600.0), (3599.5, 3599.5), ("3600", 3600.0), (" 120 ", 120.0), ("86.5", 86.5), (0, 0.0)],
)
def test_expires_in_accepts_int_float_and_numeric_string(raw: object, expected: float) -> None:
    """expires_in as an int, a float or a numeric string is read as seconds."""
    assert success(ok(expires_in=raw)).token_set.expires_in == expected


def test_missing_expires_in_is_none() -> None:
    """No expires_in means the lifetime is unknown (None), left to the provider default."""
    assert success(ok(expires_in=None)).token_set.expires_in is None


@pytest.mark.parametrize("raw", [10**12, 1e300, "99999999999", "1e15", MAX_EXPIRES_IN + 1])
def test_huge_expires_in_is_clamped(raw: object) -> None:
    """expires_in above a year is clamped to MAX_EXPIRES_IN."""
    assert success(ok(expires_in=raw)).token_set.expires_in == MAX_EXPIRES_IN


def test_integer_expires_in_beyond_float_range_is_clamped_not_raised() -> None:
    """An integer expires_in too large for a float is clamped like any huge value, never an exception."""
    body = b'{"access_token": "abc", "expires_in": 1' + b"0" * 400 + b"}"
    assert success(reply(200, body)).token_set.expires_in == MAX_EXPIRES_IN


def test_integer_refresh_token_expires_in_beyond_float_range_does_not_raise() -> None:
    """A huge integer refresh_token_expires_in yields a typed result, never an exception."""
    body = b'{"access_token": "abc", "refresh_token_expires_in": 1' + b"0" * 400 + b"}"
    assert isinstance(interpret(reply(200, body), NOW), Success | Malformed)


def test_x_refresh_token_expires_in_is_read() -> None:
    """x_refresh_token_expires_in (Intuit) is read as the refresh token's lifetime."""
    assert success(ok(x_refresh_token_expires_in=8726400)).token_set.refresh_token_expires_in == 8726400.0


def test_refresh_token_expires_in_is_read() -> None:
    """refresh_token_expires_in (GitHub, Microsoft) is read as the refresh token's lifetime."""
    assert success(ok(refresh_token_expires_in="15811200")).token_set.refresh_token_expires_in == 15811200.0


def test_missing_refresh_token_lifetime_is_none() -> None:
    """Without a refresh-token lifetime field the lifetime is None."""
    assert success(ok()).token_set.refresh_token_expires_in is None


def test_id_token_is_kept_as_secret() -> None:
    """An id_token string is kept, wrapped in a Secret."""
    ts = success(ok(id_token="eyJ.id.token")).token_set
    assert isinstance(ts.id_token, Secret)
    assert ts.id_token.reveal() == "eyJ.id.token"


@pytest.mark.parametrize(
    "ctype", ["application/x-www-form-urlencoded", "Application/X-WWW-Form-Urlencoded; charset=utf-8"]
)
def test_form_encoded_body_is_parsed(ctype: str) -> None:
    """A form-encoded success body is parsed like JSON (expires_in arrives as a string)."""
    body = urlencode({"access_token": ACCESS, "refresh_token": REFRESH, "token_type": "bearer", "expires_in": "60"})
    ts = success(reply(200, body, {"content-type": ctype})).token_set
    assert (ts.access_token.reveal(), ts.refresh_token and ts.refresh_token.reveal(), ts.expires_in) == (
        ACCESS,
        REFRESH,
        60.0,
    )


def test_json_is_parsed_whatever_the_content_type_says() -> None:
    """A JSON body labelled text/plain (seen in the wild) is still parsed as JSON."""
    body = json.dumps({"access_token": ACCESS})
    assert success(reply(200, body, {"content-type": "text/plain"})).token_set.access_token.reveal() == ACCESS


def test_success_repr_does_not_show_tokens() -> None:
    """The repr of a Success never contains the access, refresh or id token (I6)."""
    text = repr(success(ok(refresh_token=REFRESH, id_token="eyJ-id-token-value-0123456789")))
    assert ACCESS not in text
    assert REFRESH not in text
    assert "eyJ-id-token-value-0123456789" not in text


# --- malformed responses ---------------------------------------------------------------------------------


def test_html_body_is_malformed_without_quoting_it() -> None:
    """An HTML 200 (login page, WAF) is Malformed and the reason does not quote the page."""
    result = malformed(
        reply(200, "<html><body>Sign in ACCESS-COOKIE-0123456789abcdef</body></html>", {"content-type": "text/html"})
    )
    assert "<html>" not in result.reason
    assert "ACCESS-COOKIE" not in result.reason


@pytest.mark.parametrize("body", [b"", b"not json", b"{", b"access_token=abc", b"\xff\xfe\x00garbage"])
def test_non_json_body_is_malformed(body: bytes) -> None:
    """A 200 body that is not JSON (or is not valid UTF-8) is Malformed."""
    assert malformed(reply(200, body)).status == 200


@pytest.mark.parametrize("body", [[{"access_token": "abc"}], "abc", 42, None, True])
def test_json_that_is_not_an_object_is_malformed(body: object) -> None:
    """A JSON array, string, number, null or boolean is Malformed."""
    malformed(reply(200, body))


def test_deeply_nested_json_is_malformed_not_a_crash() -> None:
    """JSON nested deeper than the parser's recursion limit is Malformed, not a RecursionError."""
    malformed(reply(200, b"[" * 200_000 + b"]" * 200_000))


def test_missing_access_token_is_malformed() -> None:
    """A 200 without access_token is Malformed."""
    malformed(reply(200, {"token_type": "Bearer", "refresh_token": REFRESH}))


@pytest.mark.parametrize("value", ["", None, 123, ["abc"], {"v": "abc"}, True])
def test_access_token_not_a_non_empty_string_is_malformed(value: object) -> None:
    """access_token that is empty, null or not a string is Malformed."""
    malformed(reply(200, {"access_token": value}))


@pytest.mark.parametrize("value", [123, ["a"], {"v": "a"}, True])
def test_refresh_token_of_wrong_type_is_malformed(value: object) -> None:
    """A non-string refresh_token is Malformed (a guess could lose the grant)."""
    malformed(ok(refresh_token=value))


@pytest.mark.parametrize("value", [123, ["read", 1], {"read": True}, True])
def test_scope_of_wrong_type_is_malformed(value: object) -> None:
    """scope that is neither a string nor a list of strings is Malformed."""
    malformed(ok(scope=value))


@pytest.mark.parametrize("value", [123, ["a"], True])
def test_id_token_of_wrong_type_is_malformed(value: object) -> None:
    """A non-string id_token is Malformed."""
    malformed(ok(id_token=value))


@pytest.mark.parametrize("value", ["mac", "DPoP", "N_A", "", 1, ["Bearer"]])
def test_wrong_token_type_is_malformed(value: object) -> None:
    """A token_type other than Bearer (or not a string) is Malformed."""
    malformed(ok(token_type=value))


def test_wrong_token_type_reason_does_not_echo_a_token() -> None:
    """A token_type that holds a token-like value is not echoed in the reason."""
    assert ACCESS not in malformed(ok(token_type=ACCESS)).reason


@pytest.mark.parametrize(
    "value", [-1, -0.5, "-30", "soon", "", "NaN", "nan", "Infinity", "inf", True, False, [60], {"s": 1}]
)
def test_bad_expires_in_is_malformed(value: object) -> None:
    """expires_in that is negative, non-numeric, a bool, NaN or infinite is Malformed."""
    malformed(ok(expires_in=value))


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_json_expires_in_is_malformed(literal: bytes) -> None:
    """The non-standard JSON literals NaN/Infinity in expires_in are Malformed."""
    malformed(reply(200, b'{"access_token": "abc", "expires_in": ' + literal + b"}"))


def test_oversized_body_is_malformed() -> None:
    """A body the transport truncated (over MAX_BODY_BYTES) is Malformed, even if what arrived looked valid."""
    result = malformed(HttpReply(200, JSON, b"", truncated=True))
    assert str(MAX_BODY_BYTES) in result.reason


def test_oversized_body_is_malformed_even_for_an_error_status() -> None:
    """A truncated body is Malformed whatever the status, since its content is unknown."""
    malformed(HttpReply(400, JSON, b"", truncated=True))


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_is_malformed_and_says_so(status: int) -> None:
    """A redirect from the token endpoint is Malformed with a reason naming the redirect."""
    result = malformed(reply(status, b"", {"location": "https://elsewhere.example/login"}))
    assert "redirect" in result.reason


def test_redirect_with_an_oauth_error_body_is_still_malformed() -> None:
    """A 3xx carrying an invalid_grant body is a redirect (Malformed), never an OAuth verdict on the grant."""
    malformed(reply(302, {"error": "invalid_grant"}))


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, b""),
        (401, b"Unauthorized"),
        (403, b"<html>Forbidden</html>"),
        (404, {"message": "not found"}),
        (400, {"error": 17}),
        (400, {"error": ""}),
        (201, {"access_token": "abc"}),
        (204, b""),
    ],
)
def test_non_200_without_oauth_error_body_is_malformed(status: int, body: object) -> None:
    """A non-200, non-transient status without a string `error` field is Malformed with that status."""
    assert malformed(reply(status, body)).status == status


def test_bad_form_body_is_malformed() -> None:
    """A form-encoded body that does not parse strictly is Malformed."""
    malformed(reply(200, b"access_token", FORM))


# --- OAuth errors (RFC 6749 §5.2) -----------------------------------------------------------------------


def test_400_invalid_grant_is_oauth_failure() -> None:
    """400 invalid_grant is an OAuthFailure with code, description and status."""
    result = failure(reply(400, {"error": "invalid_grant", "error_description": "Token is expired"}))
    assert (result.error, result.description, result.status) == ("invalid_grant", "Token is expired", 400)


def test_401_invalid_client_is_oauth_failure() -> None:
    """401 invalid_client is an OAuthFailure with code invalid_client."""
    result = failure(reply(401, {"error": "invalid_client"}))
    assert (result.error, result.status) == ("invalid_client", 401)


def test_403_invalid_grant_is_oauth_failure() -> None:
    """403 invalid_grant (Auth0, Atlassian) is an OAuthFailure like a 400."""
    result = failure(reply(403, {"error": "invalid_grant", "error_description": "Unknown or invalid refresh token."}))
    assert (result.error, result.status) == ("invalid_grant", 403)


def test_200_with_error_field_is_oauth_failure() -> None:
    """A 200 carrying an error field and no access token is an OAuthFailure."""
    result = failure(reply(200, {"error": "invalid_grant"}))
    assert (result.error, result.status) == ("invalid_grant", 200)


def test_slack_invalid_refresh_token_is_invalid_grant() -> None:
    """Slack's invalid_refresh_token (HTTP 200, ok=false) resolves to invalid_grant."""
    assert failure(reply(200, {"ok": False, "error": "invalid_refresh_token"})).error == "invalid_grant"


def test_github_bad_refresh_token_is_invalid_grant() -> None:
    """GitHub's bad_refresh_token (HTTP 200) resolves to invalid_grant."""
    body = {"error": "bad_refresh_token", "error_description": "The refresh token passed is incorrect or expired."}
    assert failure(reply(200, body)).error == "invalid_grant"


@pytest.mark.parametrize("code", ["invalid_scope", "invalid_request", "unsupported_grant_type", "unauthorized_client"])
def test_other_error_codes_pass_through(code: str) -> None:
    """Other RFC 6749 error codes are kept as they are."""
    assert failure(reply(400, {"error": code})).error == code


def test_form_encoded_error_is_oauth_failure() -> None:
    """A form-encoded error body is read like a JSON one."""
    assert failure(reply(400, urlencode({"error": "invalid_grant"}), FORM)).error == "invalid_grant"


def test_missing_error_description_is_empty() -> None:
    """No error_description gives an empty description."""
    assert failure(reply(400, {"error": "invalid_grant"})).description == ""


def test_error_description_is_sanitized() -> None:
    """error_description loses echoed tokens and control characters."""
    desc = f"refresh token {REFRESH} is invalid\r\nX-Injected: yes\x1b[31m"
    result = failure(reply(400, {"error": "invalid_grant", "error_description": desc}))
    assert REFRESH not in result.description
    assert not re.search(r"[\x00-\x1f\x7f]", result.description)


def test_error_description_is_bounded() -> None:
    """A very long error_description is cut to a bounded length."""
    result = failure(reply(400, {"error": "invalid_grant", "error_description": "word " * 10_000}))
    assert len(result.description) <= 160


def test_error_code_carries_no_control_characters() -> None:
    """The error code of an OAuthFailure is safe to show: no control characters (terminal/log injection)."""
    result = failure(reply(400, {"error": "invalid_scope\x1b[2J\r\nFAKE LOG LINE"}))
    assert not re.search(r"[\x00-\x1f\x7f]", result.error)


def test_token_echoed_in_error_code_does_not_reach_the_message() -> None:
    """A token echoed in the `error` field never reaches a classified error's message (I6)."""
    result = failure(reply(400, {"error": f"invalid_request:{REFRESH}"}))
    grant = Grant(
        name="g", provider="p", refresh_token=Secret(REFRESH), refresh_fp="fp_0", access_token=None,
        access_fp=None, expires_at=None, scopes=(), generation=1, state=GrantState.ACTIVE,
    )  # fmt: skip
    attempt = Attempt(
        id=1, grant="g", generation=1, refresh_fp="fp_0", worker="w", started_at=0.0, state=AttemptState.OPEN
    )
    exc = classify_other(result, grant=grant, attempt=attempt, worker="w")
    assert REFRESH not in str(exc)


# --- transient answers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599, 408])
def test_server_errors_are_transient(status: int) -> None:
    """5xx (and 408) without an OAuth body are Transient with no error code."""
    result = transient(reply(status, b"<html>Bad Gateway</html>", {"content-type": "text/html"}))
    assert (result.status, result.error, result.retry_after) == (status, None, None)


def test_5xx_with_oauth_error_body_is_transient() -> None:
    """A 5xx is Transient even when its body names an OAuth error (the server is failing, not judging)."""
    result = transient(reply(500, {"error": "invalid_grant"}))
    assert result.status == 500


def test_429_with_delta_seconds_retry_after() -> None:
    """429 with Retry-After in seconds is Transient with that wait."""
    result = transient(reply(429, b"", {"retry-after": "120"}))
    assert (result.status, result.retry_after) == (429, 120.0)


def test_429_with_http_date_retry_after() -> None:
    """429 with Retry-After as an HTTP-date waits until that date."""
    date = format_datetime(datetime.fromtimestamp(NOW + 90, UTC), usegmt=True)
    assert transient(reply(429, b"", {"retry-after": date})).retry_after == pytest.approx(90.0)


def test_429_with_oauth_error_body_is_transient() -> None:
    """429 is Transient even when the body carries an OAuth error code."""
    result = transient(reply(429, {"error": "rate_limited"}, {"content-type": "application/json", "retry-after": "5"}))
    assert result.retry_after == 5.0


def test_503_temporarily_unavailable_is_transient() -> None:
    """503 temporarily_unavailable is Transient and keeps the code."""
    result = transient(reply(503, {"error": "temporarily_unavailable"}))
    assert (result.status, result.error) == (503, "temporarily_unavailable")


@pytest.mark.parametrize("code", ["slow_down", "temporarily_unavailable", "server_error"])
def test_transient_error_codes_on_400_are_transient(code: str) -> None:
    """400 slow_down / temporarily_unavailable / server_error are Transient, not a verdict on the grant."""
    assert transient(reply(400, {"error": code})).error == code


def test_503_retry_after_is_kept() -> None:
    """Retry-After on a 503 is reported on the Transient."""
    assert transient(reply(503, b"", {"retry-after": "7"})).retry_after == 7.0


# --- parse_retry_after -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5e3", "Thu, 32 Foo 2020 99:99:99 GMT"])
def test_retry_after_absent_or_unparsable_is_none(value: str | None) -> None:
    """An absent or unparsable Retry-After gives None."""
    assert parse_retry_after(value, NOW) is None


def test_retry_after_delta_seconds_with_whitespace() -> None:
    """Delta-seconds surrounded by whitespace are read."""
    assert parse_retry_after("  30 ", NOW) == 30.0


def test_retry_after_date_in_the_past_is_zero() -> None:
    """An HTTP-date in the past means retry now (0), never a negative wait."""
    date = format_datetime(datetime.fromtimestamp(NOW - 3600, UTC), usegmt=True)
    assert parse_retry_after(date, NOW) == 0.0


@pytest.mark.parametrize("value", ["\u00b2", "1\u00b3", "\u2460"])
def test_retry_after_unicode_digits_are_none_not_a_crash(value: str) -> None:
    """Retry-After with non-ASCII "digits" (superscripts, circled numbers) gives None, not ValueError."""
    assert parse_retry_after(value, NOW) is None


def test_retry_after_date_with_overflowing_field_is_none() -> None:
    """An HTTP-date with an out-of-range field gives None, not OverflowError."""
    assert parse_retry_after("01 Jan 2020 99999999999999999999:00:00 GMT", NOW) is None


def test_interpret_survives_a_hostile_retry_after_header() -> None:
    """interpret() returns Transient for a 429 whose Retry-After is garbage, instead of raising."""
    assert transient(reply(429, b"", {"retry-after": "\u00b2"})).retry_after is None


# --- properties ------------------------------------------------------------------------------------------

TOKEN_ALPHABET = string.ascii_letters + string.digits + "-_.~+/="
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)
token_strings = st.text(alphabet=TOKEN_ALPHABET, min_size=1, max_size=60)
field_values = json_values | token_strings | st.sampled_from(["Bearer", "bearer", "mac", "3600", "-1", "NaN", ""])
TOKEN_FIELDS = [
    "access_token", "refresh_token", "token_type", "expires_in", "scope", "id_token", "error",
    "error_description", "refresh_token_expires_in", "x_refresh_token_expires_in",
]  # fmt: skip
token_shaped = st.dictionaries(
    st.sampled_from(TOKEN_FIELDS),
    field_values | st.sampled_from(["invalid_grant", "invalid_client", "slow_down", "bad_refresh_token"]),
    max_size=10,
)
statuses = st.integers(min_value=100, max_value=599) | st.sampled_from([200, 400, 401, 403, 429, 503])
content_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "application/x-www-form-urlencoded", "text/html", ""]
) | st.text(max_size=40)
retry_afters = st.sampled_from(
    [
        None,
        "0",
        "120",
        "soon",
        "Wed, 21 Oct 2015 07:28:00 GMT",
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "\u00b2",
        "1\u00b3",
        "01 Jan 2020 99999999999999999999:00:00 GMT",
    ]
) | st.text(max_size=30)
PROPERTY = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])


def _headers(ctype: str, retry_after: str | None) -> dict[str, str]:
    headers = {"content-type": ctype}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    return headers


@PROPERTY
@given(
    body=st.binary(max_size=2000),
    status=statuses,
    ctype=content_types,
    retry_after=retry_afters,
    truncated=st.booleans(),
)
def test_interpret_never_raises_on_arbitrary_bytes(
    body: bytes, status: int, ctype: str, retry_after: str | None, truncated: bool
) -> None:
    """For any bytes body, status and content type, interpret returns one of the four results."""
    result = interpret(HttpReply(status, _headers(ctype, retry_after), body, truncated), NOW)
    assert isinstance(result, Success | OAuthFailure | Transient | Malformed)


@PROPERTY
@given(value=json_values | token_shaped, status=statuses, ctype=content_types, retry_after=retry_afters)
@example(value={"access_token": "abc", "expires_in": 1e308}, status=200, ctype="application/json", retry_after=None)
def test_interpret_never_raises_on_arbitrary_json(
    value: object, status: int, ctype: str, retry_after: str | None
) -> None:
    """For any JSON value, status and content type, interpret returns one of the four results."""
    body = json.dumps(value).encode()
    result = interpret(HttpReply(status, _headers(ctype, retry_after), body), NOW)
    assert isinstance(result, Success | OAuthFailure | Transient | Malformed)


@PROPERTY
@given(
    fields=token_shaped,
    status=statuses,
    ctype=st.sampled_from(["application/json", "application/x-www-form-urlencoded"]),
)
def test_interpret_never_raises_on_form_encoded_token_shaped_bodies(
    fields: dict[str, object], status: int, ctype: str
) -> None:
    """Token-shaped bodies sent form-encoded (or JSON) always give one of the four results."""
    if ctype == "application/json":
        body = json.dumps(fields).encode()
    else:
        body = urlencode({k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}).encode()
    result = interpret(HttpReply(status, {"content-type": ctype}, body), NOW)
    assert isinstance(result, Success | OAuthFailure | Transient | Malformed)


secret_tokens = st.text(alphabet=TOKEN_ALPHABET, min_size=20, max_size=80)


@st.composite
def bodies_with_tokens(draw: st.DrawFn) -> tuple[dict[str, object], list[str]]:
    """A token-shaped dict whose access/refresh tokens may also be echoed in other fields."""
    access = draw(secret_tokens)
    refresh = draw(secret_tokens)
    body = draw(token_shaped)
    body["access_token"] = draw(st.sampled_from([access, "", None, 5]))
    body["refresh_token"] = draw(st.sampled_from([refresh, "", None, ["x"]]))
    echo = st.sampled_from([access, refresh]).flatmap(
        lambda tok: st.sampled_from([tok, f"token {tok} is invalid", f"\n{tok}\x00", [tok], {"t": tok}])
    )
    for key in ("error_description", "token_type", "scope", "expires_in", "id_token"):
        if draw(st.booleans()):
            body[key] = draw(echo)
    if draw(st.booleans()):
        body["error"] = draw(st.sampled_from(["invalid_grant", "invalid_client", "invalid_scope"]))
    tokens = [v for v in (body["access_token"], body["refresh_token"]) if isinstance(v, str) and len(v) >= 20]
    return body, tokens


@PROPERTY
@given(case=bodies_with_tokens(), status=statuses, ctype=st.sampled_from(["application/json", "text/plain"]))
def test_failure_text_never_contains_a_token_from_the_body(
    case: tuple[dict[str, object], list[str]], status: int, ctype: str
) -> None:
    """A Malformed reason or OAuthFailure description never contains a token (>= 20 chars) that was in the body."""
    body, tokens = case
    result = interpret(HttpReply(status, {"content-type": ctype}, json.dumps(body).encode()), NOW)
    if isinstance(result, Malformed):
        text = result.reason
    elif isinstance(result, OAuthFailure):
        text = result.description
    else:
        return
    for token in tokens:
        assert token not in text


@PROPERTY
@given(value=json_values | token_shaped, status=statuses, ctype=st.sampled_from(["application/json", "", "text/html"]))
def test_success_only_for_200_with_a_non_empty_access_token(value: object, status: int, ctype: str) -> None:
    """Success is returned only for status 200 with a non-empty string access_token, and carries that token."""
    result = interpret(HttpReply(status, {"content-type": ctype}, json.dumps(value).encode()), NOW)
    if isinstance(result, Success):
        assert status == 200
        assert isinstance(value, dict)
        access = value.get("access_token")
        assert isinstance(access, str)
        assert access
        assert result.token_set.access_token.reveal() == access


@PROPERTY
@given(fields=token_shaped, status=statuses)
def test_success_expires_in_is_finite_non_negative_and_clamped(fields: dict[str, object], status: int) -> None:
    """Whenever a Success has expires_in, it is finite, >= 0 and <= MAX_EXPIRES_IN."""
    result = interpret(HttpReply(status, JSON, json.dumps(fields).encode()), NOW)
    if isinstance(result, Success) and result.token_set.expires_in is not None:
        assert 0.0 <= result.token_set.expires_in <= MAX_EXPIRES_IN


@PROPERTY
@given(text=st.text(max_size=300))
def test_malformed_reasons_never_hold_a_long_token_like_run(text: str) -> None:
    """A Malformed reason never contains a token-like run of 20+ characters from the body (token_type echo)."""
    result = interpret(HttpReply(200, JSON, json.dumps({"access_token": "a", "token_type": text}).encode()), NOW)
    if isinstance(result, Malformed):
        assert not _TOKENISH_RUN.search(result.reason)
