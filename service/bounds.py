"""Bounds on what the service reads from clients and ML functions, in one place.

JSON is parsed strictly, by orjson (C: a third of the standard library's CPU on an
ML function's answer), which refuses `NaN` and `Infinity` (not JSON), `1e999`, lone
surrogates (`"\ud800"`, which no UTF-8 encoder takes back) and bad UTF-8, and nests
at most 1,024 deep. It reads an integer past 64 bits as a float, so text with a run
of 20 digits goes to the standard library instead (exact integers, up to 4,300
digits), held to the same rules, and so does what orjson refuses, for the reason.
`parse_json` turns each refusal into one `JSONRefused` naming the reason, so no body
can make a 500; `dump_json` writes
compact UTF-8 JSON, exact integers included.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

# Pub/Sub's message limit, and so the most the service carries of anything: a value an
# expression makes, a callback's body, a webhook, a message. (An ML function's answer may
# be 10 MiB: engine/outbound.py.)
MAX_PAYLOAD_BYTES = 10_000_000
MAX_REQUEST_BYTES = 1_000_000
# An operator's body (a bulk re-drive's selection) is a few hundred bytes.
MAX_OPERATOR_BODY_BYTES = 65_536
# A request message is at most MAX_REQUEST_BYTES of JSON; base64 grows it by a third.
MAX_PUSH_BYTES = 1_500_000
# An event (a trigger's push) is any producer's message: up to Pub/Sub's 10 MB of data,
# base64 in its envelope (13,333,336 bytes), and its attributes (100 of 1,280 bytes).
MAX_EVENT_PUSH_BYTES = 13_500_000
# Deeper than any payload of ours or of an ML function; far below the interpreter's limit.
MAX_JSON_DEPTH = 64
# Only an escape can put a surrogate into parsed text (UTF-8 input cannot hold one).
LONE_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# Text orjson would read with an integer past 64 bits as a float (a string may match too).
LONG_DIGITS = re.compile(rb"\d{20}")


class JSONRefused(ValueError):
    """Bytes that are not strict JSON within the bounds."""


def parse_json(data: bytes) -> Any:
    """Strict JSON: finite numbers only, nested at most MAX_JSON_DEPTH deep."""
    if LONG_DIGITS.search(data) is None:
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # refused: the standard library's reading below names the reason
        else:
            # Every nesting opens a bracket: fewer brackets than the bound, no walk.
            if data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH:
                _check(value, strings=False)
            return value
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


def dump_json(value: Any) -> bytes:
    """Compact UTF-8 JSON of a value parsed or made here (finite numbers, str keys)."""
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer past 64 bits, or a key that is not a string
        return json.dumps(
            value, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode()


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
