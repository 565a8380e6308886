"""Where two JSON values differ, as JSON pointers (RFC 6901), in bounded work.

One rule for "equal JSON" (a shadow's default `compare`, two executions compared):
objects equal key by key whatever their order, numbers by value (1 and 1.0 are equal),
`true` never equal to 1. Subtrees that are equal are passed over at C speed (`==`, then
their sorted JSON text); only unequal ones are walked, node by node, at most `budget`
nodes, so two 10 MB answers that differ everywhere cost a bounded walk, not a quadratic one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

MAX_POINTERS = 100
WALK_BUDGET = 200_000  # nodes visited at most, about 0.1 s of CPU


@dataclass(frozen=True, slots=True)
class Differences:
    """The pointers where the two values differ (in document order, at most the limit
    asked), and whether the walk stopped before seeing everything (`truncated`)."""

    pointers: list[str]
    truncated: bool = False

    @property
    def equal(self) -> bool:
        return not self.pointers and not self.truncated


def same_json(a: Any, b: Any) -> bool:
    """Whether `a` and `b` are equal JSON (see the module's docstring)."""
    return differences(a, b, limit=1).equal


def differences(
    a: Any, b: Any, limit: int = MAX_POINTERS, budget: int = WALK_BUDGET
) -> Differences:
    """Where `b` differs from `a`: a pointer per value changed, added or removed."""
    found: list[str] = []
    stack: list[tuple[str, Any, Any]] = [("", a, b)]
    visited = 0
    while stack:
        pointer, x, y = stack.pop()
        visited += 1
        if visited > budget:
            return Differences(found, truncated=True)
        if isinstance(x, dict) and isinstance(y, dict):
            if _alike(x, y):
                continue
            children = [(k, x.get(k, _MISSING), y.get(k, _MISSING)) for k in _keys(x, y)]
        elif isinstance(x, list) and isinstance(y, list):
            if _alike(x, y):
                continue
            longest = max(len(x), len(y))
            children = [(str(i), _at(x, i), _at(y, i)) for i in range(longest)]
        else:
            if not _same_scalar(x, y):
                found.append(pointer)
                if len(found) >= limit:
                    return Differences(found, truncated=bool(stack))
            continue
        for key, left, right in reversed(children):  # popped in document order
            stack.append((f"{pointer}/{_escaped(key)}", left, right))
    return Differences(found)


class _Missing:
    """A member or item one side does not have."""


_MISSING = _Missing()


def _alike(x: Any, y: Any) -> bool:
    """Equal containers, decided without walking them where C code can."""
    if x != y:
        return False
    try:  # `==` takes True for 1: their JSON text tells them apart
        return orjson.dumps(x, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
            y, option=orjson.OPT_SORT_KEYS
        )
    except TypeError:  # an integer past 64 bits: walked
        return False


def _same_scalar(x: Any, y: Any) -> bool:
    if isinstance(x, bool) or isinstance(y, bool):
        return x is y
    if isinstance(x, (_Missing, dict, list)) or isinstance(y, (_Missing, dict, list)):
        return False
    return bool(x == y)


def _keys(x: dict[str, Any], y: dict[str, Any]) -> list[str]:
    """Both objects' keys: the first's in its order, then those only the second has."""
    return [*x, *(key for key in y if key not in x)]


def _at(values: list[Any], index: int) -> Any:
    return values[index] if index < len(values) else _MISSING


def _escaped(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")
