"""`${...}` expressions in flow definitions: parsed when a flow loads, evaluated per call.

A value that is exactly one expression keeps the type of what it points at
(`${steps.match_candidato.output.vacancies}` is a list); text around expressions
makes the result a string. A path starts at `input`, `steps`, `item` or `env`
and goes on with `.name` or `[index]`; a missing key evaluates to null.
`env` is read once, when the flow loads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ROOTS = frozenset({"input", "steps", "item", "env"})
_EXPRESSION = re.compile(r"\$\{([^}]*)\}")
_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]")
_ROOT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ExpressionError(ValueError):
    """An expression that cannot be parsed or resolved."""


@dataclass(frozen=True, slots=True)
class Path:
    """A parsed `${root.a.b[0]}` reference."""

    text: str
    root: str
    keys: tuple[str | int, ...]

    @classmethod
    def parse(cls, text: str) -> Path:
        source = text.strip()
        root_match = _ROOT.match(source)
        if not root_match or root_match.group() not in ROOTS:
            raise ExpressionError(f"${{{text}}}: must start with one of {', '.join(sorted(ROOTS))}")
        keys: list[str | int] = []
        position = root_match.end()
        while position < len(source):
            segment = _SEGMENT.match(source, position)
            if not segment:
                raise ExpressionError(f"${{{text}}}: cannot read from {source[position:]!r}")
            name, index = segment.groups()
            keys.append(name if name is not None else int(index))
            position = segment.end()
        return cls(text=source, root=root_match.group(), keys=tuple(keys))

    @property
    def step(self) -> str | None:
        """The step this path reads from, if it starts at `steps`."""
        if self.root != "steps":
            return None
        if not self.keys or not isinstance(self.keys[0], str):
            raise ExpressionError(f"${{{self.text}}}: name a step after 'steps'")
        return self.keys[0]

    def resolve(self, scope: Mapping[str, Any]) -> Any:
        value: Any = scope.get(self.root)
        for key in self.keys:
            if isinstance(key, int) and isinstance(value, list):
                value = value[key] if key < len(value) else None
            elif isinstance(key, str) and isinstance(value, Mapping):
                value = value.get(key)
            else:
                return None
        return value


@dataclass(frozen=True, slots=True)
class Template:
    """A flow value: a literal, one expression, or text with expressions inside."""

    parts: tuple[str | Path, ...]
    whole: bool  # exactly one expression: keep the referenced value's type

    @classmethod
    def parse(cls, text: str, env: Mapping[str, str]) -> Template:
        parts: list[str | Path] = []
        position = 0
        for match in _EXPRESSION.finditer(text):
            if match.start() > position:
                parts.append(text[position : match.start()])
            path = Path.parse(match.group(1))
            if path.root == "env":
                parts.append(_env_value(path, env))
            else:
                parts.append(path)
            position = match.end()
        if "${" in text[position:]:
            raise ExpressionError(f"{text!r}: unclosed '${{'")
        if position < len(text):
            parts.append(text[position:])
        whole = len(parts) == 1 and isinstance(parts[0], Path)
        return cls(parts=tuple(parts), whole=whole)

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(part for part in self.parts if isinstance(part, Path))

    def render(self, scope: Mapping[str, Any]) -> Any:
        if self.whole:
            assert isinstance(self.parts[0], Path)
            return self.parts[0].resolve(scope)
        return "".join(
            part if isinstance(part, str) else _as_text(part.resolve(scope)) for part in self.parts
        )


def _env_value(path: Path, env: Mapping[str, str]) -> str:
    if len(path.keys) != 1 or not isinstance(path.keys[0], str):
        raise ExpressionError(f"${{{path.text}}}: write ${{env.NAME}}")
    name = path.keys[0]
    value = env.get(name)
    if not value:
        raise ExpressionError(f"${{{path.text}}}: environment variable {name} is not set")
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def compile_value(value: Any, env: Mapping[str, str]) -> Any:
    """Turn every string inside a YAML value into a Template (other scalars stay literal)."""
    if isinstance(value, str):
        return Template.parse(value, env)
    if isinstance(value, dict):
        return {str(key): compile_value(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [compile_value(item, env) for item in value]
    return value


def render_value(value: Any, scope: Mapping[str, Any]) -> Any:
    """Evaluate a compiled value against the execution's scope."""
    if isinstance(value, Template):
        return value.render(scope)
    if isinstance(value, dict):
        return {key: render_value(item, scope) for key, item in value.items()}
    if isinstance(value, list):
        return [render_value(item, scope) for item in value]
    return value


def paths_in(value: Any) -> list[Path]:
    """Every expression path inside a compiled value."""
    if isinstance(value, Template):
        return list(value.paths)
    if isinstance(value, dict):
        return [path for item in value.values() for path in paths_in(item)]
    if isinstance(value, list):
        return [path for item in value for path in paths_in(item)]
    return []
