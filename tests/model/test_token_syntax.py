"""The syntax a stored access token must have before it is served (I7: nothing that could split a header)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from grantkeeper.model.tokens import MAX_TOKEN_CHARS, access_token_ok

#: The rule as RFC 6749 A.12 states it (VSCHAR without the space), kept here as the oracle.
VSCHAR_NO_SPACE = re.compile(r"[\x21-\x7e]+")

# Around the edges of the range: space, DEL, controls, Latin-1, other scripts, and the characters
# (CR, LF, NUL) a header injection needs.
EDGES = st.sampled_from(["\x20", "\x7f", "\x00", "\r", "\n", "\t", "\x1b", "\x80", "\xa0", "é", "\u2028", "\u0660"])
TOKENS = st.lists(st.one_of(st.characters(min_codepoint=0x21, max_codepoint=0x7E), EDGES, st.characters()),
                  max_size=40).map("".join)  # fmt: skip


@settings(max_examples=3000)
@given(TOKENS)
def test_access_token_ok_is_the_rfc_rule(value: str) -> None:
    assert access_token_ok(value) == (VSCHAR_NO_SPACE.fullmatch(value) is not None)


def test_access_token_ok_refuses_the_empty_and_the_oversized() -> None:
    assert not access_token_ok("")
    assert access_token_ok("a" * MAX_TOKEN_CHARS)
    assert not access_token_ok("a" * (MAX_TOKEN_CHARS + 1))
    assert access_token_ok("00D5g00000ABCDE!AQ0AQHn.9x~+/=")  # Salesforce's shape
    for bad in ("a b", "a\r\nX-Injected: 1", "tok\x00", "tok\x7f", "tøk", "tok\u0660"):
        assert not access_token_ok(bad), repr(bad)
