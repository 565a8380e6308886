"""CEL's results as JSON: what an expression gives must be something a step can send,
store and deliver. Timestamps become RFC 3339 text, durations "1.5s", map keys text;
bytes, NaN and infinities are refused (ValueError naming the reason)."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from typing import Any


def json_value(value: Any) -> Any:
    """A CEL result as JSON data: timestamps as RFC 3339, durations in seconds ("1.5s")."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a JSON number")
        return value
    if isinstance(value, list):
        return [json_value(item) for item in value]
    if isinstance(value, dict):
        return {_json_key(key): json_value(item) for key, item in value.items()}
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}s"
    if isinstance(value, (bytes, bytearray)):
        raise ValueError("a bytes value is not JSON")
    raise ValueError(f"a {type(value).__name__} value is not JSON")


def _json_key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, (int, str)):
        return str(key)
    raise ValueError(f"a {type(key).__name__} map key is not JSON")


def json_size(value: str | list[Any] | dict[str, Any]) -> int:
    """Characters of text, or of compact JSON: what MAX_VALUE_BYTES bounds."""
    if isinstance(value, str):
        return len(value)
    return len(json.dumps(value, separators=(",", ":")))


def as_text(value: Any) -> str:
    """A value as it stands in text around expressions: strings as they are, else JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))
