"""Equal JSON and where two values differ, as JSON pointers, in bounded work."""

from __future__ import annotations

from service.differences import differences, same_json


def test_equal_json_is_by_value_whatever_the_order_of_keys() -> None:
    assert same_json({"a": 1, "b": [1, 2]}, {"b": [1, 2], "a": 1.0})
    assert not same_json({"ok": True}, {"ok": 1})  # Python's == would say equal
    assert not same_json([1, 2], [1, 2, 3])
    assert not same_json({"a": None}, {})
    assert same_json(2**70, 2**70) and not same_json(2**70, 2**70 + 1)


def test_each_change_is_a_pointer_in_document_order() -> None:
    before = {"vacancies": [{"id": "v1", "score": 0.9}, {"id": "v2"}], "a/b": 1, "t~": 1}
    after = {"vacancies": [{"id": "v1", "score": 0.8}], "a/b": 2, "t~": 1, "new": 0}
    found = differences(before, after)
    assert found.pointers == ["/vacancies/0/score", "/vacancies/1", "/a~1b", "/new"]
    assert not found.truncated and not found.equal
    assert differences(before, before).equal
    assert differences(1, "1").pointers == [""]


def test_the_walk_is_bounded_in_pointers_and_in_nodes() -> None:
    before = [{"n": n} for n in range(10_000)]
    after = [{"n": -n - 1} for n in range(10_000)]
    limited = differences(before, after, limit=5)
    assert limited.pointers == [f"/{n}/n" for n in range(5)] and limited.truncated
    walked = differences(before, after, budget=1000)
    assert walked.truncated and 0 < len(walked.pointers) < 1000
