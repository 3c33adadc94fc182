"""Secret masks itself everywhere (I6); sanitize_provider_text makes provider text safe to show."""

from __future__ import annotations

import copy
import hmac
import json
import logging
import pickle
import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grantkeeper._exceptions import sanitize_provider_text, without_controls
from grantkeeper._secrets import Secret

VALUE = "RT-super-secret-refresh-token-0123456789"
MASK = "Secret('**********')"


# --- Secret: masking ----------------------------------------------------------------------------------------


def test_repr_is_masked() -> None:
    """repr(Secret) shows the mask, not the value."""
    assert repr(Secret(VALUE)) == MASK


def test_str_is_masked() -> None:
    """str(Secret) shows the mask, not the value."""
    assert str(Secret(VALUE)) == MASK


@pytest.mark.parametrize("spec", ["", "s", ">60", "^80", "!<10"])
def test_format_is_masked_for_any_spec(spec: str) -> None:
    """format(Secret, spec) shows the mask whatever the format spec."""
    assert VALUE not in format(Secret(VALUE), spec)


def test_fstring_is_masked() -> None:
    """f-strings (plain, !r, !s, with a spec) never show the value."""
    s = Secret(VALUE)
    text = f"{s} {s!r} {s!s} {s:>50} {s=}"
    assert VALUE not in text


def test_percent_and_str_format_are_masked() -> None:
    """%-formatting and str.format never show the value."""
    s = Secret(VALUE)
    assert VALUE not in "%s %r" % (s, s) + "{} {!r}".format(s, s)  # noqa: UP031, UP032


def test_containers_show_the_mask() -> None:
    """A Secret inside a list, dict or tuple is masked in the container's repr."""
    s = Secret(VALUE)
    assert VALUE not in repr([s]) + repr({"token": s}) + repr((s,))


def test_logging_shows_the_mask(caplog: pytest.LogCaptureFixture) -> None:
    """Logging a Secret as an argument (any level) never puts the value in the record's message."""
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("grantkeeper.test").debug("token=%s repr=%r", Secret(VALUE), Secret(VALUE))
    assert VALUE not in caplog.text


def test_exception_message_with_a_secret_is_masked() -> None:
    """An exception built from a Secret shows the mask in str and repr."""
    exc = RuntimeError(Secret(VALUE))
    assert VALUE not in str(exc) + repr(exc)


@settings(deadline=None)
@given(value=st.text(min_size=1))
def test_no_rendering_contains_the_value(value: str) -> None:
    """For any value not already part of the mask, repr/str/format never contain it."""
    if value in MASK:
        return
    s = Secret(value)
    assert value not in repr(s) + str(s) + format(s, "") + f"{s!r}"


def test_reveal_returns_the_value() -> None:
    """reveal() is the one way out and returns the exact value."""
    assert Secret(VALUE).reveal() == VALUE


@pytest.mark.parametrize("value", [b"bytes", 123, None, ["x"]])
def test_only_str_can_be_held(value: object) -> None:
    """A Secret refuses anything but str."""
    with pytest.raises(TypeError):
        Secret(value)  # type: ignore[arg-type]


def test_has_no_instance_dict() -> None:
    """A Secret has no __dict__ through which vars() could dump the value."""
    with pytest.raises(TypeError):
        vars(Secret(VALUE))


# --- Secret: refusing to leave the process ------------------------------------------------------------------


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_is_refused(protocol: int) -> None:
    """pickle.dumps(Secret) raises TypeError for every protocol."""
    with pytest.raises(TypeError):
        pickle.dumps(Secret(VALUE), protocol=protocol)


def test_pickle_refusal_message_does_not_show_the_value() -> None:
    """The pickling error does not contain the value."""
    with pytest.raises(TypeError) as info:
        pickle.dumps(Secret(VALUE))
    assert VALUE not in str(info.value)


def test_pickling_a_container_is_refused() -> None:
    """A Secret nested in a container also refuses to be pickled."""
    with pytest.raises(TypeError):
        pickle.dumps({"grant": [Secret(VALUE)]})


def test_deepcopy_is_refused() -> None:
    """copy.deepcopy goes through the pickle protocol and is refused too."""
    with pytest.raises(TypeError):
        copy.deepcopy(Secret(VALUE))


def test_json_dumps_fails() -> None:
    """json.dumps of a Secret raises TypeError instead of writing the value."""
    with pytest.raises(TypeError):
        json.dumps({"token": Secret(VALUE)})


def test_json_dumps_error_does_not_show_the_value() -> None:
    """The JSON encoding error does not contain the value."""
    with pytest.raises(TypeError) as info:
        json.dumps(Secret(VALUE))
    assert VALUE not in str(info.value)


# --- Secret: equality and hashing -----------------------------------------------------------------------


def test_equal_values_are_equal() -> None:
    """Two Secrets with the same value are equal."""
    assert Secret(VALUE) == Secret(VALUE)


@pytest.mark.parametrize("other", [VALUE + "x", VALUE[:-1], VALUE[:-1] + "Z", "", VALUE.upper()])
def test_different_values_are_unequal(other: str) -> None:
    """Secrets with different values (same prefix, other length, other case) are unequal."""
    assert Secret(VALUE) != Secret(other)


def test_secret_never_equals_a_plain_string() -> None:
    """A Secret does not compare equal to the str it holds."""
    assert Secret(VALUE) != VALUE


def test_equality_uses_constant_time_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    """== compares through hmac.compare_digest (constant time), not str ==."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert Secret("abc") == Secret("abc")
    assert Secret("abc") != Secret("abd")
    assert len(calls) == 2


def test_non_ascii_values_compare_correctly() -> None:
    """Non-ASCII values compare equal/unequal correctly (compare_digest needs bytes)."""
    assert Secret("clé-ü") == Secret("clé-ü")
    assert Secret("clé-ü") != Secret("clé-u")


def test_equal_secrets_hash_equal() -> None:
    """Equal Secrets have equal hashes, so they work as set members and dict keys."""
    assert hash(Secret(VALUE)) == hash(Secret(VALUE))
    assert len({Secret(VALUE), Secret(VALUE), Secret("other")}) == 2


def test_hash_differs_from_the_plain_string_hash() -> None:
    """A Secret's hash is not the hash of its plain value."""
    assert hash(Secret(VALUE)) != hash(VALUE)


@settings(deadline=None)
@given(a=st.text(), b=st.text())
def test_equality_matches_value_equality(a: str, b: str) -> None:
    """Secret(a) == Secret(b) exactly when a == b, and equal Secrets hash equal."""
    assert (Secret(a) == Secret(b)) == (a == b)
    if a == b:
        assert hash(Secret(a)) == hash(Secret(b))


def test_truthiness_and_length_follow_the_value() -> None:
    """An empty Secret is falsy; len() gives the value's length without showing it."""
    assert not Secret("")
    assert Secret("x")
    assert len(Secret(VALUE)) == len(VALUE)


# --- sanitize_provider_text ---------------------------------------------------------------------------------

TOKENISH = re.compile(r"[A-Za-z0-9\-_.~+/=]{20,}")


@pytest.mark.parametrize(
    "token",
    [
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl",
        "1//0gHdP9-abcdefghijklmnopqrstuvwxyz",
        "0123456789abcdef0123456789abcdef",
        "xoxe-1-My0xLTE0Mzg0NzEwMDAtMzg5",
    ],
)
def test_token_like_runs_are_redacted(token: str) -> None:
    """A token echoed in provider text is replaced by [redacted]."""
    result = sanitize_provider_text(f"refresh token {token} is invalid")
    assert token not in result
    assert "[redacted]" in result


def test_ordinary_words_are_kept() -> None:
    """Plain prose (words under 20 characters) passes through unchanged."""
    text = "The refresh token is expired or was revoked."
    assert sanitize_provider_text(text) == text


@pytest.mark.parametrize("char", ["\n", "\r", "\x00", "\x1b", "\t", "\x7f", "\x08"])
def test_ascii_control_characters_are_removed(char: str) -> None:
    """ASCII control characters (newline, CR, NUL, ESC, DEL, ...) do not survive."""
    assert char not in sanitize_provider_text(f"bad{char}request")


@pytest.mark.parametrize("char", ["\x85", "\x9b", "\x90"])
def test_c1_control_characters_are_removed(char: str) -> None:
    """C1 control characters (NEL, 8-bit CSI, DCS: Unicode category Cc) do not survive either."""
    assert char not in sanitize_provider_text(f"bad{char}request")


def test_length_is_bounded_with_an_ellipsis() -> None:
    """Text longer than the limit is cut to exactly `limit` characters ending in an ellipsis."""
    result = sanitize_provider_text("word " * 100, limit=40)
    assert len(result) == 40
    assert result.endswith("…")


def test_non_string_input_is_rendered() -> None:
    """Any object is accepted and rendered through str()."""
    assert sanitize_provider_text({"error": 1}) == "{'error': 1}"


@settings(deadline=None)
@given(text=st.text(), limit=st.integers(min_value=1, max_value=400))
def test_output_is_bounded(text: str, limit: int) -> None:
    """For any text and positive limit, the result is at most `limit` characters."""
    assert len(sanitize_provider_text(text, limit)) <= limit


@settings(deadline=None)
@given(text=st.text())
def test_output_has_no_token_like_run(text: str) -> None:
    """For any text, the result contains no run of 20+ token characters."""
    assert not TOKENISH.search(sanitize_provider_text(text, 10_000))


@settings(deadline=None)
@given(text=st.text(st.characters(max_codepoint=0x7F)))
def test_output_has_no_ascii_control_characters(text: str) -> None:
    """For any ASCII text, the result contains no control characters."""
    result = sanitize_provider_text(text, 10_000)
    assert not any(unicodedata.category(c) == "Cc" for c in result)


@settings(deadline=None)
@given(prefix=st.text(max_size=30), token=st.from_regex(TOKENISH, fullmatch=True), suffix=st.text(max_size=30))
def test_embedded_token_never_survives(prefix: str, token: str, suffix: str) -> None:
    """A token-like run embedded anywhere in provider text never survives sanitizing."""
    assert token not in sanitize_provider_text(prefix + token + suffix, 10_000)


def test_collecting_a_secret_never_waits_for_the_registry_lock() -> None:
    """The garbage collector may run a Secret's finalizer while this thread holds the registry lock (any
    allocation can trigger a collection): the finalizer must not block, or the process deadlocks."""
    import gc
    import threading

    from grantkeeper import _secrets

    cycle: list[object] = [Secret("collected-in-a-cycle-value")]
    cycle.append(cycle)  # only the cycle collector can free it
    del cycle
    collector = threading.Thread(target=gc.collect, daemon=True)
    with _secrets._live_lock:
        collector.start()
        collector.join(timeout=30)
        finished = not collector.is_alive()
    collector.join()
    assert finished
    Secret("any-new-secret-value")  # applies the collected removals
    assert _secrets.live_values_in("x collected-in-a-cycle-value y") == []


# --- without_controls: the one control-character filter (messages, CLI output, discovery errors) ----------------


@settings(deadline=None)
@given(text=st.text())
def test_without_controls_replaces_exactly_the_control_characters(text: str) -> None:
    """Every Cc character (C0, DEL, C1) becomes the replacement, one for one; nothing else changes."""
    result = without_controls(text, "?")
    assert len(result) == len(text)
    for before, after in zip(text, result, strict=True):
        assert after == ("?" if unicodedata.category(before) == "Cc" else before)


def test_the_cli_cleans_untrusted_text_through_it() -> None:
    from grantkeeper.cli._render import clean

    assert clean("a\x1b[31mb\x9bc") == without_controls("a\x1b[31mb\x9bc") == "a?[31mb?c"
