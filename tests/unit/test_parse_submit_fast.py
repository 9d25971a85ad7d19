"""parse_submit's one pass over a body's own fields (http._plain_fields) vouches only for bodies
the full check (_check_fields) passes: whatever the body, parse_submit answers as the full
check followed by the rest of the parse would."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.ingress.http import _check_fields, _plain_fields, _submit_input, parse_submit
from aggregator.model import ApiError

NAMES = ["to", "from", "text", "callback_url", "reference", "transliterate", "class",
         "validity", "send_at", "other"]
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=False),
                   st.text(max_size=5), st.just("\ud800"), st.just("+38344123456"),
                   st.just("https://example.com/cb"), st.just("marketing"),
                   st.just("2030-01-01T00:00:00Z"), st.lists(st.integers(), max_size=2))


def _outcome(call: Any) -> object:
    try:
        return call()
    except ApiError as exc:
        return (exc.status, exc.code, exc.message)


def _full(body: dict[str, Any]) -> object:
    def both() -> object:
        _check_fields(body)
        return _submit_input(body, "key", None)
    return _outcome(both)


@settings(max_examples=3000, deadline=None)
@given(st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=6))
def test_parse_submit_answers_as_the_full_check(body: dict[str, Any]) -> None:
    if _plain_fields(body):
        _check_fields(body)  # vouched for: passes
    assert _outcome(lambda: parse_submit(body, "key")) == _full(body)


def test_a_plain_body_takes_the_one_pass() -> None:
    body = {"to": "+38344123456", "from": "LOAD", "text": "hi"}
    assert _plain_fields(body)
    for wrong in ({**body, "to": 1}, {**body, "x": 1}, {"to": "+1", "text": "x"},
                  {**body, "validity": True}, {**body, "transliterate": 1},
                  {**body, "text": "\ud800"}):
        assert not _plain_fields(wrong), wrong
