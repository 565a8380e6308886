"""How long a step may wait: durations, written `500ms`, `30s`, `10m`, `24h`, `7d` (or a
number of seconds), each at most MAX_WAIT_S."""

from __future__ import annotations

import re

MAX_WAIT_S = 30 * 86_400
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400}


def duration_s(value: str | float) -> float:
    """Seconds of a duration; ValueError naming the accepted forms and the bound."""
    if isinstance(value, bool):
        raise ValueError("a duration such as 30s, 10m, 24h or 7d")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"{value!r} is not a duration such as 500ms, 30s, 10m, 24h or 7d")
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if not 0 < seconds <= MAX_WAIT_S:
        raise ValueError(f"{value!r}: a wait is more than 0 and at most 30d")
    return seconds
