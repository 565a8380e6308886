"""`${...}` expressions in flow definitions: CEL, checked when a flow loads, evaluated per use.

Expressions are CEL, Google's Common Expression Language, run by cel-expr-python
(the CEL team's C++ implementation), with CEL's strings, math and bindings
extensions. A value that is exactly one expression keeps the type of its result
(`${steps.match_candidato.output.vacancies}` is a list); text around expressions
makes a string, non-strings written as JSON.

What an expression may read depends on where it is written (`Names`): `input`,
`steps.NAME` (the steps in its `after` chain; each `{"status", "output"}`),
`item` (in a for_each step's `body` and `output`), `response` (in `output` and
`poll`), `callback` (`${callback.url}` in the body of a step with `callback:`);
`${env.NAME}` is replaced when the flow loads. A plain path (`input.user_id`,
`steps.x.output.vacancies[0]`, `item.id`) is read directly and is null where a key
or index is missing, as before CEL; anything else follows CEL, where a missing
key is an error (test it with `has(...)`).

Bounded: CEL allows 10,000 comprehension iterations per evaluation (the C++
runtime's budget), and a result must fit MAX_VALUE_BYTES as JSON.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cel_expr_python import cel
from cel_expr_python.ext import ext_bindings, ext_math, ext_strings

from service.bounds import MAX_PAYLOAD_BYTES
from service.engine.cel_json import as_text, json_size, json_value

# An ML answer may be 10 MB; nothing an expression makes may be bigger.
MAX_VALUE_BYTES = MAX_PAYLOAD_BYTES
MAX_EXPRESSION_CHARS = 4096
# cel-cpp's RuntimeOptions.comprehension_max_iterations, which cel-expr-python keeps.
ITERATION_BUDGET = 10_000

ROOTS = frozenset({"input", "steps", "item", "response", "callback", "env"})
_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UNDECLARED = re.compile(r"undeclared reference to '([^']+)'")
_CEL_PREFIX = re.compile(r"^[A-Z_]+: (ERROR: )?(<input>:)?")
_DYN = cel.Type.DYN
_MAP = cel.Type.Map(cel.Type.STRING, cel.Type.DYN)
_ERROR = cel.Type.ERROR


class ExpressionError(ValueError):
    """An expression that cannot be compiled where it is written (found when a flow loads)."""


class UnsetEnvironment(ExpressionError):
    """`${env.NAME}` of a variable that is not set."""


class EvaluationError(Exception):
    """An expression that failed on an execution's data: the step using it fails."""


@dataclass(frozen=True, slots=True)
class Names:
    """What an expression may read where it is written, for its checks and error messages."""

    where: str  # the field, for messages: "when", "body.user_id", "output", "result"
    roots: frozenset[str]  # among input, item, response
    steps: frozenset[str]  # the steps it may read
    flow_steps: frozenset[str] = frozenset()  # every step of the flow

    def at(self, where: str) -> Names:
        return Names(where, self.roots, self.steps, self.flow_steps)

    def variables(self) -> frozenset[str]:
        """The CEL variables: each step is its own (`steps.NAME`), so only those read are built."""
        return self.roots | {f"steps.{name}" for name in self.steps}

    def explain(self, reference: str) -> str:
        """Why `reference` (as the CEL checker names it) cannot be read here."""
        root, _, rest = reference.partition(".")
        step = rest.split(".")[0]
        if root == "steps" and step in self.flow_steps:
            return f"reads step {step!r}, which is not in 'after'"
        if root == "steps":
            return f"unknown step {step!r}" if step else "name a step after 'steps'"
        if root == "item":
            return "item is only known in a for_each step's body and output"
        if root == "response":
            return "response (the step's answer) is only known in output and poll"
        if root == "callback":
            return "callback (its url) is only known in the body of a step with callback:"
        if root == "env":
            return "env is read when the flow loads: write ${env.NAME} on its own"
        return f"unknown name {root!r}: read one of {', '.join(self.readable())}"

    def readable(self) -> list[str]:
        return sorted(self.roots) + (["steps.NAME"] if self.steps else [])


@dataclass(frozen=True, slots=True)
class Path:
    """A plain `${root.a.b[0]}` read: null where a key or index is missing."""

    text: str
    root: str
    keys: tuple[str | int, ...]

    @classmethod
    def parse(cls, text: str) -> Path | None:
        """The path `text` is, or None if it is any other expression."""
        root = _IDENTIFIER.match(text)
        if root is None or root.group() not in ROOTS:
            return None
        keys: list[str | int] = []
        position = root.end()
        while position < len(text):
            segment = _SEGMENT.match(text, position)
            if segment is None:
                return None
            name, index = segment.groups()
            keys.append(name if name is not None else int(index))
            position = segment.end()
        if root.group() == "steps":
            if not keys or not isinstance(keys[0], str):
                return None
            return cls(text, f"steps.{keys[0]}", tuple(keys[1:]))
        return cls(text, root.group(), tuple(keys))

    @property
    def steps(self) -> frozenset[str]:
        return frozenset({self.root[6:]} if self.root.startswith("steps.") else ())

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
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
class Program:
    """Any other expression: a checked CEL program and the variables it reads."""

    text: str
    where: str
    program: Any  # cel_expr_python Expression
    result_type: str
    variables: tuple[str, ...]

    @property
    def steps(self) -> frozenset[str]:
        return frozenset(name[6:] for name in self.variables if name.startswith("steps."))

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        data = {name: scope[name] for name in self.variables if name in scope}
        try:
            value = self.program.eval(data=data)
        except RuntimeError as exc:  # the iteration budget
            raise EvaluationError(_reason(str(exc))) from None
        if value.type() == _ERROR:
            raise EvaluationError(_reason(str(value.value())))
        try:
            result = json_value(value.plain_value())
            if isinstance(result, (str, list, dict)) and json_size(result) > MAX_VALUE_BYTES:
                raise ValueError(f"the result is larger than {MAX_VALUE_BYTES} bytes as JSON")
        except ValueError as exc:
            raise EvaluationError(str(exc)) from None
        return result

    def fail(self, reason: str) -> EvaluationError:
        return EvaluationError(f"{self.where}: ${{{self.text}}}: {reason}")


Expression = Path | Program


def compile_expression(text: str, names: Names) -> Expression:
    """One expression (the text inside `${...}`), checked against what it may read."""
    source = text.strip()
    if len(source) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"{names.where}: expression longer than {MAX_EXPRESSION_CHARS}")
    path = Path.parse(source)
    if path is not None:
        name = path.root
        if name not in names.variables():
            raise ExpressionError(f"{names.where}: ${{{source}}}: {names.explain(path.text)}")
        return path
    environment = _environment(names.variables())
    try:
        program = environment.compile(source)
    except RuntimeError as exc:
        message = str(exc)
        undeclared = _UNDECLARED.search(message)
        if undeclared is None:
            reason = _reason(message)
        elif re.search(rf"\b{re.escape(undeclared.group(1))}\s*\(", source):
            reason = f"unknown function {undeclared.group(1)!r}"
        else:
            reason = names.explain(undeclared.group(1))
        raise ExpressionError(f"{names.where}: ${{{source}}}: {reason}") from None
    variables = tuple(sorted(name for name in names.variables() if _mentions(source, name)))
    result_type = program.return_type().name()
    return Program(source, names.where, program, result_type, variables)


@dataclass(frozen=True, slots=True)
class Template:
    """A flow value: a literal, one expression, or text with expressions inside."""

    source: str
    parts: tuple[str | Expression, ...]
    whole: bool  # exactly one expression: keep the result's type

    @classmethod
    def parse(cls, text: str, names: Names, env: Mapping[str, str]) -> Template:
        parts: list[str | Expression] = []
        position = 0
        for start, end in _spans(text, names.where):
            if start > position:
                parts.append(text[position:start])
            inner = text[start + 2 : end - 1]
            path = Path.parse(inner.strip())
            if path is not None and path.root == "env":
                parts.append(_env_value(names.where, path, env))
            else:
                parts.append(compile_expression(inner, names))
            position = end
        if position < len(text):
            parts.append(text[position:])
        whole = len(parts) == 1 and not isinstance(parts[0], str)
        if not any(isinstance(part, (Path, Program)) for part in parts):
            parts = ["".join(str(part) for part in parts)] if parts else [""]
        return cls(source=text, parts=tuple(parts), whole=whole)

    @property
    def expressions(self) -> tuple[Expression, ...]:
        return tuple(part for part in self.parts if not isinstance(part, str))

    @property
    def result_type(self) -> str:
        """The CEL type of a whole expression's result (DYN when only known at run time)."""
        if not self.whole:
            return "STRING"
        part = self.parts[0]
        return part.result_type if isinstance(part, Program) else "DYN"

    def render(self, scope: Mapping[str, Any]) -> Any:
        if self.whole:
            return _evaluate(self.parts[0], scope)  # type: ignore[arg-type]
        return "".join(
            part if isinstance(part, str) else as_text(_evaluate(part, scope))
            for part in self.parts
        )


def _evaluate(expression: Expression, scope: Mapping[str, Any]) -> Any:
    if isinstance(expression, Path):
        return expression.evaluate(scope)
    try:
        return expression.evaluate(scope)
    except EvaluationError as exc:
        raise expression.fail(str(exc)) from None


def compile_value(value: Any, names: Names, env: Mapping[str, str]) -> Any:
    """Turn every string inside a YAML value into a Template (other scalars stay literal)."""
    if isinstance(value, str):
        return Template.parse(value, names, env)
    if isinstance(value, dict):
        return {
            str(key): compile_value(item, names.at(f"{names.where}.{key}"), env)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            compile_value(item, names.at(f"{names.where}[{i}]"), env)
            for i, item in enumerate(value)
        ]
    return value


def render_value(value: Any, scope: Mapping[str, Any]) -> Any:
    """Evaluate a compiled value against an execution's scope; EvaluationError names it."""
    if isinstance(value, Template):
        return value.render(scope)
    if isinstance(value, dict):
        return {key: render_value(item, scope) for key, item in value.items()}
    if isinstance(value, list):
        return [render_value(item, scope) for item in value]
    return value


def templates_in(value: Any) -> list[Template]:
    """Every template inside a compiled value."""
    if isinstance(value, Template):
        return [value]
    if isinstance(value, dict):
        return [template for item in value.values() for template in templates_in(item)]
    if isinstance(value, list):
        return [template for item in value for template in templates_in(item)]
    return []


def source_of(value: Any) -> Any:
    """A compiled value as it was written."""
    if isinstance(value, Template):
        return value.source
    if isinstance(value, dict):
        return {key: source_of(item) for key, item in value.items()}
    if isinstance(value, list):
        return [source_of(item) for item in value]
    return value


@lru_cache(maxsize=256)
def _environment(variables: frozenset[str]) -> Any:
    declared = {
        name: _MAP if name == "input" or name.startswith("steps.") else _DYN for name in variables
    }
    # CEL's standard extensions: strings (lowerAscii, split, join, format, …), math
    # (math.greatest, math.round, …) and cel.bind.
    extensions = [ext_strings.ExtStrings(), ext_math.ExtMath(), ext_bindings.ExtBindings()]
    return cel.NewEnv(variables=declared, extensions=extensions)


def _spans(text: str, where: str) -> list[tuple[int, int]]:
    """Where each `${...}` is: braces inside balance, quoted CEL strings are skipped."""
    spans = []
    position = text.find("${")
    while position >= 0:
        depth, at, quote = 0, position + 2, ""
        while at < len(text):
            char = text[at]
            if quote:
                if char == "\\":
                    at += 1
                elif text.startswith(quote, at):
                    at += len(quote) - 1
                    quote = ""
            elif char in "'\"":
                quote = text[at : at + 3] if text[at : at + 3] in ("'''", '"""') else char
                at += len(quote) - 1
            elif char == "{":
                depth += 1
            elif char == "}":
                if depth == 0:
                    break
                depth -= 1
            at += 1
        if at >= len(text):
            raise ExpressionError(f"{where}: {text!r}: unclosed '${{'")
        spans.append((position, at + 1))
        position = text.find("${", at + 1)
    return spans


def _mentions(source: str, variable: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(variable)}(?![\w-])", source) is not None


def _env_value(where: str, path: Path, env: Mapping[str, str]) -> str:
    if len(path.keys) != 1 or not isinstance(path.keys[0], str):
        raise ExpressionError(f"{where}: ${{{path.text}}}: write ${{env.NAME}}")
    name = path.keys[0]
    value = env.get(name)
    if not value:
        raise UnsetEnvironment(f"{where}: ${{{path.text}}}: environment variable {name} is not set")
    return value


def _reason(message: str) -> str:
    """CEL's message on one line, without its status code and source excerpt."""
    if "Iteration budget exceeded" in message:
        return f"more than {ITERATION_BUDGET} comprehension iterations (CEL's budget)"
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    return _CEL_PREFIX.sub("", first).strip()
