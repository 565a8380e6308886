"""Bounds on what the service reads from clients and ML functions, in one place.

JSON is parsed strictly: Python's `json` accepts `NaN` and `Infinity` (not JSON)
and lone surrogates (`"\ud800"`, which no UTF-8 encoder takes back), turns `1e999`
into infinity, raises RecursionError on deep nesting and ValueError on integers of
more than 4,300 digits. `parse_json` turns each of those into one `JSONRefused`
naming the reason, so no body can make a 500.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_REQUEST_BYTES = 1_000_000
# An operator's body (a bulk re-drive's selection) is a few hundred bytes.
MAX_OPERATOR_BODY_BYTES = 65_536
# A request message is at most MAX_REQUEST_BYTES of JSON; base64 grows it by a third.
MAX_PUSH_BYTES = 1_500_000
# Deeper than any payload of ours or of an ML function; far below the interpreter's limit.
MAX_JSON_DEPTH = 64
# Only an escape can put a surrogate into parsed text (UTF-8 input cannot hold one).
LONE_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class JSONRefused(ValueError):
    """Bytes that are not strict JSON within the bounds."""


def parse_json(data: bytes) -> Any:
    """Strict JSON: finite numbers only, nested at most MAX_JSON_DEPTH deep."""
    try:
        value = json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:
        raise JSONRefused(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except UnicodeDecodeError:
        raise JSONRefused("not JSON: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise JSONRefused(f"not JSON: {exc}") from None
    except ValueError as exc:  # an integer too long to convert, or a refused constant
        raise JSONRefused(str(exc)) from None
    _check(value, strings=LONE_SURROGATE_ESCAPE.search(data) is not None)
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check(value: Any, strings: bool) -> None:
    """Depth, finiteness and (`strings`) encodable text, without recursion: one pass."""
    stack: list[tuple[Any, int]] = [([value], 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = [*node.keys(), *node.values()] if strings else node.values()
        else:
            children = node
        if depth > MAX_JSON_DEPTH:
            raise JSONRefused(f"nested deeper than {MAX_JSON_DEPTH} levels")
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
            elif isinstance(child, float) and not math.isfinite(child):
                raise JSONRefused("a number too large for a double")
            elif strings and isinstance(child, str) and not child.isascii():
                try:
                    child.encode()
                except UnicodeEncodeError:
                    raise JSONRefused("a lone surrogate (\\ud800-\\udfff) in a string") from None
