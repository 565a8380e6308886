"""Strict JSON: every way a parser can be made to choke is one clear refusal."""

from __future__ import annotations

import pytest

from service.bounds import MAX_JSON_DEPTH, JSONRefused, parse_json

REFUSED = [
    (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 64 levels"),
    (b'{"a":' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1), "nested deeper"),
    (b'{"x": NaN}', "NaN is not JSON"),
    (b"[Infinity]", "Infinity is not JSON"),
    (b'{"x": -Infinity}', "-Infinity is not JSON"),
    (b'{"x": 1e999}', "a number too large for a double"),
    (b"-1e400", "a number too large for a double"),
    (b"[" + b"9" * 5000 + b"]", "integer string conversion"),
    (b'{"x": "\\ud800"}', "a lone surrogate"),
    (b'{"\\udfff": 1}', "a lone surrogate"),
    (b"\xff\xfe\x00", "not JSON"),
    (b'{"a": 1', "not JSON"),
    (b"", "not JSON"),
]


@pytest.mark.parametrize(("data", "reason"), REFUSED, ids=[r for _, r in REFUSED])
def test_hostile_json_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    with pytest.raises(JSONRefused, match=reason.replace("(", r"\(")):
        parse_json(data)


def test_strict_json_within_the_bounds_is_parsed() -> None:
    assert parse_json(b'{"a": [1, 2.5, -3e10, true, null, "x"]}') == {
        "a": [1, 2.5, -3e10, True, None, "x"]
    }
    assert parse_json(b'"\\ud83d\\ude00 \xc3\xa9"') == "😀 é"  # a surrogate pair: one character
    nested = parse_json(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)
    depth = 0
    while isinstance(nested, list):
        depth += 1
        nested = nested[0] if nested else None
    assert depth == MAX_JSON_DEPTH
