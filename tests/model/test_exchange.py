"""The two ways a send gets no answer are one `NoAnswer` type, and still two distinct, frozen values (I2)."""

from __future__ import annotations

import dataclasses

import pytest

from grantkeeper.model.exchange import Ambiguous, HttpReply, NoAnswer, NotSent, SendResult


def _kind(result: SendResult) -> str:
    match result:
        case NotSent(reason=reason):
            return f"not sent: {reason}"
        case Ambiguous(reason):
            return f"ambiguous: {reason}"
        case HttpReply(status=status):
            return f"HTTP {status}"


def test_not_sent_and_ambiguous_are_no_answers_that_never_compare_equal() -> None:
    unsent, maybe = NotSent("connect refused"), Ambiguous("connect refused")
    assert isinstance(unsent, NoAnswer) and isinstance(maybe, NoAnswer)
    assert unsent != maybe and unsent == NotSent("connect refused") and hash(unsent) == hash(NotSent("connect refused"))
    assert (repr(unsent), repr(maybe)) == ("NotSent(reason='connect refused')", "Ambiguous(reason='connect refused')")
    assert [_kind(unsent), _kind(maybe), _kind(HttpReply(200, {}, b""))] == [
        "not sent: connect refused",
        "ambiguous: connect refused",
        "HTTP 200",
    ]


def test_no_answers_are_frozen_slotted_and_keep_their_kind() -> None:
    for value in (NotSent("reset"), Ambiguous("reset")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            value.reason = "other"  # type: ignore[misc]
        assert not hasattr(value, "__dict__")
        assert type(dataclasses.replace(value, reason="timeout")) is type(value)
