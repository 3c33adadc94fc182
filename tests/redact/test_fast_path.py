"""The cheap redaction (rules skipped by pre-checks, live values looked up only inside token runs) removes exactly
what the plain one removed: every rule run on every text, every live value searched for everywhere. The plain
one is written here, as the oracle."""

from __future__ import annotations

import json
import re
import sys
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grantkeeper import _secrets
from grantkeeper._secrets import Secret, live_values_in
from grantkeeper.redact import _core
from grantkeeper.redact._core import REDACTED, scrub_text

RULES = [rule for rule, _char, _names in _core._RULES]


def live_now() -> set[str]:
    live_values_in("")  # applies the collections pending, as every lookup does
    return set(_secrets._live_count)


def reference_values(text: str) -> set[str]:
    return {v for v in live_now() if len(v) >= _secrets.MIN_REDACTED_LENGTH and v in text}


def reference_scrub(text: str) -> str:
    """scrub_text as it was: every live value found anywhere, then all seven rules, each on the last one's result."""
    for value in sorted(reference_values(text), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    for rule in RULES:
        text = rule.sub(_core._replace, text)
    return text


# Field names in any case, with the characters re's case-insensitive matching takes for ASCII letters.
TWINS = {"i": ["I", "\u0130", "\u0131"], "s": ["S", "\u017f"], "k": ["K", "\u212a"]}


@st.composite
def spelled(draw: st.DrawFn, word: str) -> str:
    return "".join(draw(st.sampled_from([c, c.upper(), *TWINS.get(c, [])])) for c in word)


names = st.sampled_from([*sorted(_core.SENSITIVE_KEYS), "bearer", "basic", "dpop", "mac", "tokens", "xcode"])
syntax = st.sampled_from(["=", ": ", ":", " = ", '": "', "': '", "', '", '"', "'", " ", "\t", "\n", ",", "&", ";",
                          "}", "]", "(", "[redacted]", "%3D", "%20"])  # fmt: skip
token_like = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=", min_size=8,
                     max_size=40)  # fmt: skip
odd_value = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=8, max_size=20),
    # token characters up to a space or a quote somewhere after the first 8, before the 20th, or after
    st.tuples(token_like, st.sampled_from([" ", "'", "\u00e9", "%"]), token_like).map("".join),
)
noise = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@st.composite
def log_text(draw: st.DrawFn, values: list[str]) -> str:
    """Names, syntax, values and noise run together: values mid-word, quoted, URL-encoded, JSON-encoded."""
    parts: list[str] = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.integers(0, 4))
        if kind == 0:  # a name, often in the syntax a rule looks for
            parts.append(draw(st.sampled_from(["", '"', "'", " ", "("])) + draw(spelled(draw(names))) + draw(syntax))
        elif kind == 1:
            parts.append(draw(syntax))
        elif kind == 2:  # a live value, or a credential nobody registered (only the rules can catch it)
            value = draw(st.sampled_from([*values, "abcdefgh", "eyJhbGciOi.x-y_z"]))
            how = draw(st.sampled_from([str, json.dumps, repr, quote, lambda v: urlencode({"x": v})]))
            parts.append(how(value))
        else:
            parts.append(draw(noise))
    return "".join(parts)


@settings(max_examples=400, deadline=None)
@given(data=st.data(), tokens=st.lists(token_like, max_size=4), odd=st.lists(odd_value, max_size=2))
def test_live_values_are_found_wherever_they_are(data: st.DataObject, tokens: list[str], odd: list[str]) -> None:
    held = [Secret(v) for v in tokens + odd]
    text = data.draw(log_text(tokens + odd))
    assert set(live_values_in(text)) == reference_values(text)
    del held


@settings(max_examples=600, deadline=None)
@given(data=st.data(), tokens=st.lists(token_like, max_size=3))
def test_scrub_text_removes_what_every_rule_everywhere_removes(data: st.DataObject, tokens: list[str]) -> None:
    held = [Secret(v) for v in tokens]
    text = data.draw(log_text(tokens))
    assert scrub_text(text) == reference_scrub(text)
    del held


@settings(max_examples=600, deadline=None)
@given(data=st.data())
def test_a_rule_is_skipped_only_when_it_cannot_match(data: st.DataObject) -> None:
    """Each pre-check on its own: where it says skip, its rule finds nothing in that text."""
    text = data.draw(log_text([]))
    folded = _core._folded(text)
    for rule, char, names_in in _core._RULES:
        if _core._SYNTAX(text) is None or char not in text or not names_in(folded):
            assert rule.search(text) is None, (rule.pattern, text)


# One text per rule that only that rule changes: a pre-check too strict for any rule fails here.
ONE_RULE = [
    '{"Access_Token": "abcdefgh"}',
    '{"Password": "abcdefgh"}',
    "[('Authorization', 'abcdefgh')]",
    "Cookie: abcdefgh",
    "x(refresh_token = 'abcdefgh')",
    "next?code=abcdefgh",
    "refresh_token: abcdefgh",
    "dpop abcdefgh",
    "acce\u017fs_token=abcdefgh",  # U+017F is an "s" to the rule's (?i)
    "\u0130d_token: abcdefgh",  # U+0130 is an "i"
    "set-coo\u212aie: abcdefgh",  # U+212A is a "k"
]


def test_each_rule_still_runs_where_it_matches() -> None:
    for text in ONE_RULE:
        assert "abcdefgh" not in scrub_text(text) and scrub_text(text) == reference_scrub(text), text


def test_the_fold_covers_every_character_re_takes_for_an_ascii_letter() -> None:
    letter = re.compile("(?i)[a-z]")
    for code in range(0x80, sys.maxunicode + 1):
        c = chr(code)
        if letter.fullmatch(c):
            twins = [a for a in "abcdefghijklmnopqrstuvwxyz" if re.fullmatch(f"(?i){a}", c)]
            assert _core._folded(c) in twins, f"U+{code:04X}"


def test_prefixes_put_in_the_run_index_are_made_of_run_characters() -> None:
    """`_remember` files a prefix under the token runs when `isalnum` or the ASCII strip says so: both must imply the
    runs' character class, or a value there could start where no run is looked at."""
    token_char = re.compile(_secrets.TOKEN_CHARS)
    assert all(token_char.fullmatch(c) for c in _secrets._ASCII_TOKEN_CHARS)
    # ASCII text is cut into runs by a byte table: it keeps exactly the class's characters there.
    assert [c for c in map(chr, range(128)) if token_char.fullmatch(c)] == sorted(_secrets._ASCII_TOKEN_CHARS)
    assert [chr(c) for c in range(128) if _secrets._RUN_BYTES[c] == c and c != 0x20] == sorted(
        _secrets._ASCII_TOKEN_CHARS
    )
    for code in range(sys.maxunicode + 1):
        c = chr(code)
        if c.isalnum():
            assert token_char.fullmatch(c), f"U+{code:04X}"


def test_a_value_with_a_space_in_its_prefix_is_found_everywhere() -> None:
    held = Secret("pass word 12345")
    assert held.reveal() in _secrets._odd.get("pass wor", ())
    assert live_values_in("said: 'xpass word 12345y'") == ["pass word 12345"]
    assert scrub_text("said: 'xpass word 12345y'") == f"said: 'x{REDACTED}y'"


def test_values_not_sorted_yet_are_found() -> None:
    """Values made since the last lookup are in `_fresh` until a lookup gets the lock to sort them; one that cannot
    (the lock is held here) still finds them."""
    held = [Secret("fresh-long-value-0123456789abcdef"), Secret("fresh-short1")]
    with _secrets._live_lock:
        assert len(_secrets._fresh) >= 2
        text = "a fresh-long-value-0123456789abcdef b (fresh-short1)"
        assert live_values_in(text) == ["fresh-long-value-0123456789abcdef", "fresh-short1"]
    assert live_values_in(text) == ["fresh-long-value-0123456789abcdef", "fresh-short1"]
    assert not _secrets._fresh
    assert "fresh-lo" in _secrets._long and "fresh-sh" in _secrets._short
    del held


def test_a_value_being_sorted_is_never_missed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lookup that cannot take the lock reads the indexes while another thread sorts fresh values: here the
    sorting happens right after each read of `_long` (the worst moment). The value is read in `_fresh` before."""

    class SortedRightAfterEachRead(dict[str, tuple[str, ...]]):
        sorting = False

        def get(self, key: str, default: Any = None) -> Any:
            held = super().get(key, default)
            if not self.sorting:  # the sorting reads this index too
                self.sorting = True
                _secrets._sort_fresh()
                self.sorting = False
            return held

    old_long = Secret("already-sorted-long-value-0123456789")
    live_values_in("")  # sorts it into _long
    plain, sorted_long = _secrets._long, SortedRightAfterEachRead(_secrets._long)
    monkeypatch.setattr(_secrets, "_long", sorted_long)
    monkeypatch.setattr(_secrets, "_INDEXES", tuple(sorted_long if i is plain else i for i in _secrets._INDEXES))
    monkeypatch.setattr(_secrets, "_TIERS", tuple((sorted_long if index is plain else index, width)
                                                  for index, width in _secrets._TIERS))  # fmt: skip
    assert any(index is sorted_long for index, _ in _secrets._TIERS)
    value = "being-sorted-value-0123456789abcdef"
    fresh = Secret(value)
    with _secrets._live_lock:  # the lookup cannot sort: another thread holds the lock
        assert value in _secrets._fresh.get(value[:8], ())
        assert live_values_in(f"x {value} y") == [value]
    del old_long, fresh


def test_a_value_leaves_fresh_only_once_it_is_sorted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The other order of the same race: a lookup runs right after the sorting takes a value out of `_fresh`."""
    value, seen = "leaving-fresh-value-0123456789abcdef", []

    class LookedUpRightAfterEachRemoval(dict[str, tuple[str, ...]]):
        def __delitem__(self, key: str) -> None:
            super().__delitem__(key)
            seen.append(live_values_in(f"x {value} y"))  # the lock is held: this lookup cannot sort

    plain, fresh = _secrets._fresh, LookedUpRightAfterEachRemoval()
    monkeypatch.setattr(_secrets, "_fresh", fresh)
    monkeypatch.setattr(_secrets, "_INDEXES", tuple(fresh if i is plain else i for i in _secrets._INDEXES))
    monkeypatch.setattr(_secrets, "_TIERS", tuple((fresh if index is plain else index, width)
                                                  for index, width in _secrets._TIERS))  # fmt: skip
    held = Secret(value)
    assert value in fresh.get(value[:8], ())
    with _secrets._live_lock:
        _secrets._sort_fresh()
    assert seen == [[value]]
    del held


def test_a_text_as_long_as_a_long_value_is_still_searched(monkeypatch: pytest.MonkeyPatch) -> None:
    """Texts shorter than `LONG` are skipped when only long values live; one exactly that long is not."""
    value = "x" * (_secrets.LONG - 8) + "-long-ok"
    held = Secret(value)
    live_values_in("")  # sorted into _long
    for name in ("_fresh", "_short", "_odd"):  # as if nothing else lived: the shortcut applies
        monkeypatch.setattr(_secrets, name, {})
    assert len(value) == _secrets.LONG and live_values_in(value) == [value]
    assert live_values_in(value[1:]) == []
    del held


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=60), noise, log_text([])),
       shortest=st.integers(1, 25))  # fmt: skip
def test_runs_are_the_regex_runs(text: str, shortest: int) -> None:
    """The byte-table runs (ASCII text) and the regex runs (any text) are the maximal runs of `TOKEN_CHARS`."""
    expected = [run for run in re.findall(f"{_secrets.TOKEN_CHARS}+", text) if len(run) >= shortest]
    assert _secrets._runs(text, shortest) == expected
