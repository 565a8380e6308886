"""Flow definitions: YAML files validated (service/engine/flow_spec.py) and compiled into
frozen models when the service starts.

Every mistake a flow can hold is found here, not during an execution: unknown
fields, unknown or cyclic `after` references, CEL expressions that do not compile
or read what is not known where they are written (a step which has not run yet,
`item` outside a for_each), results of the wrong type where CEL knows the type,
and `call` URLs whose environment is missing.
"""

from __future__ import annotations

import dataclasses
import graphlib
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import BaseModel

from service.engine.expressions import (
    ExpressionError,
    Names,
    Template,
    compile_value,
)
from service.engine.flow_spec import (
    FlowSpec,
    LimitSpec,
    ScheduleSpec,
    StepSpec,
    input_model,
    parse_spec,
)
from service.engine.kinds import kind_of
from service.engine.kinds.base import fixed, fixed_url, typed
from service.engine.step import Cache, Step
from service.engine.triggers import Trigger, compile_triggers
from service.errors import FlowError
from service.execution import is_step_name

FLOW_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
MAX_FLOW_FILE_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Flow:
    """A loaded flow: its steps in dependency order and the model its input must fit."""

    name: str
    description: str | None
    steps: Mapping[str, Step]
    input_model: type[BaseModel]
    result: Any = None  # compiled; None delivers the whole execution document
    # The definition as loaded (canonical JSON) and its hash: what an execution is pinned to.
    source: str = "{}"
    version: str = ""
    schedules: tuple[ScheduleSpec, ...] = ()
    triggers: Mapping[str, Trigger] = dataclasses.field(default_factory=dict)  # by name
    # The steps right after each step: the runner starts them as it ends.
    dependents: Mapping[str, tuple[str, ...]] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        steps = self.steps.values()
        after = {name: tuple(s.name for s in steps if name in s.after) for name in self.steps}
        object.__setattr__(self, "dependents", after)

    def validate_input(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The input with defaults applied; raises pydantic's ValidationError naming fields."""
        return self.input_model.model_validate(data).model_dump()

    def with_defaults(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """`data` with each optional field it lacks at its default: the input of an execution
        stored before the field was declared (resumed, re-driven) reads like a new one."""
        defaults = {
            name: field.default
            for name, field in self.input_model.model_fields.items()
            if not field.is_required()
        }
        return {**defaults, **data}


def check_limits(flows: Mapping[str, Flow]) -> None:
    """FlowError unless every step naming one limit key gives it the same numbers."""
    seen: dict[str, tuple[str, LimitSpec]] = {}
    for flow in flows.values():
        for step in flow.steps.values():
            if step.limit is None:
                continue
            where = f"{flow.name}.{step.name}"
            first = seen.setdefault(step.limit.key, (where, step.limit))
            if first[1] != step.limit:
                raise FlowError(
                    f"flow {flow.name}",
                    f"limit {step.limit.key!r}: other numbers than {first[0]}'s "
                    f"(concurrency {first[1].concurrency}, rate {first[1].rate})",
                    step.name,
                )


def check_children(flows: Mapping[str, Flow]) -> None:
    """FlowError unless every flow step names a flow that is loaded."""
    for flow in flows.values():
        for step in flow.steps.values():
            if step.child_flow is not None and step.child_flow not in flows:
                known = ", ".join(sorted(flows))
                reason = f"flow: no flow named {step.child_flow!r} (known: {known})"
                raise FlowError(f"flow {flow.name}", reason, step.name)


def load_flows(directory: Path, env: Mapping[str, str]) -> dict[str, Flow]:
    """Every `*.yaml` / `*.yml` flow of a directory, by name (the file's stem).

    `env` is what `${env.NAME}` reads: Settings.flow_env() in the service.
    """
    if not directory.is_dir():
        raise FlowError(str(directory), "FLOWS_DIR is not a directory")
    flows = [load_flow(path, env) for path in flow_files(directory)]
    return {flow.name: flow for flow in flows}


def flow_files(directory: Path) -> list[Path]:
    """The flow files of a folder; FlowError when it holds none."""
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    if not files:
        raise FlowError(str(directory), "no flow files (*.yaml) in FLOWS_DIR")
    return files


def load_flow(path: Path, env: Mapping[str, str]) -> Flow:
    """Read, validate and compile one flow file."""
    name, raw = read_definition(path)
    return compile_flow(name, raw, env, str(path))


def read_definition(path: Path) -> tuple[str, dict[str, Any]]:
    """A flow file's name and its parsed YAML, not yet validated."""
    file = str(path)
    name = path.stem
    if not FLOW_NAME.fullmatch(name):
        raise FlowError(file, f"file name {name!r}: use lower case letters, digits, - and _")
    if path.stat().st_size > MAX_FLOW_FILE_BYTES:
        raise FlowError(file, f"larger than {MAX_FLOW_FILE_BYTES} bytes")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise FlowError(file, f"not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise FlowError(file, "must be a mapping with 'steps'")
    return name, raw


def flow_version(source: str) -> str:
    """The version of a definition: a hash of its canonical JSON."""
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def compile_flow(name: str, raw: Any, env: Mapping[str, str], file: str) -> Flow:
    """Validate and compile a definition (a flow file's YAML, or a version kept in the store)."""
    try:
        source = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        raise FlowError(file, "holds values JSON cannot (use plain YAML scalars)") from None
    spec = parse_spec(name, raw, file)
    steps = _compile_steps(file, spec, env)
    result = None
    if spec.result is not None:
        names = Names("result", frozenset({"input"}), frozenset(steps), frozenset(steps))
        try:
            result = compile_value(spec.result, names, env)
        except ExpressionError as exc:
            raise FlowError(file, str(exc)) from None
    return Flow(
        name=name,
        description=spec.description,
        steps=MappingProxyType(steps),
        input_model=input_model(name, spec.input),
        result=result,
        source=source,
        version=flow_version(source),
        schedules=tuple(spec.schedules),
        triggers=MappingProxyType(compile_triggers(spec, env, file)),
    )


def _compile_steps(file: str, spec: FlowSpec, env: Mapping[str, str]) -> dict[str, Step]:
    for name, step in spec.steps.items():
        if not is_step_name(name):
            raise FlowError(file, "step names use letters, digits, - and _", name)
        for dependency in step.after:
            if dependency not in spec.steps:
                raise FlowError(file, f"after: unknown step {dependency!r}", name)
    sorter = graphlib.TopologicalSorter({name: step.after for name, step in spec.steps.items()})
    try:
        order = list(sorter.static_order())
    except graphlib.CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        raise FlowError(file, f"after: dependency cycle {cycle}", exc.args[1][0]) from None

    ancestors: dict[str, set[str]] = {}
    for name in order:
        after = spec.steps[name].after
        ancestors[name] = set(after).union(*(ancestors[dependency] for dependency in after))

    every = frozenset(spec.steps)
    compiled = {}
    for name in order:
        names = Names("", frozenset({"input"}), frozenset(ancestors[name]), every)
        try:
            compiled[name] = _compile_step(name, spec.steps[name], names, env)
        except ExpressionError as exc:
            raise FlowError(file, str(exc), name) from None
    return compiled


def _compile_step(name: str, spec: StepSpec, names: Names, env: Mapping[str, str]) -> Step:
    kind = kind_of(spec)
    url = ""
    if spec.call is not None:
        url = fixed_url("call", spec.call, env)
    when = for_each = None
    if spec.when is not None:
        when = typed(Template.parse(spec.when, names.at("when"), env), "when", ("BOOL", "NULL"))
    if spec.tolerate is not None and spec.for_each is None:
        raise ExpressionError("tolerate: only a for_each step has failed items to tolerate")
    if spec.for_each is not None:
        template = Template.parse(spec.for_each, names.at("for_each"), env)
        for_each = typed(template, "for_each", ("LIST",))
    # `item` is each element of a for_each; `response` is the step's answer.
    each = frozenset({"item"} if for_each is not None else ())
    each |= kind.scope
    body = compile_value(
        spec.body, Names("body", names.roots | each, names.steps, names.flow_steps), env
    )
    cache = None
    if spec.cache is not None:
        scope = Names("cache.key", names.roots | each, names.steps, names.flow_steps)
        cache = Cache(Template.parse(spec.cache.key, scope, env), float(spec.cache.ttl))
    output = None
    if spec.output is not None:
        scope = Names("output", names.roots | each | {"response"}, names.steps, names.flow_steps)
        output = compile_value(spec.output, scope, env)
    audience = fixed("audience", spec.audience, env) if spec.audience else url
    return Step(
        name=name,
        kind=kind.name,
        url=url,
        method=spec.method,
        body=body,
        after=tuple(spec.after),
        when=when,
        for_each=for_each,
        max_concurrency=spec.max_concurrency,
        timeout_s=spec.timeout_s,
        retry=spec.retry,
        on_error=spec.on_error,
        audience=audience,
        output=output,
        auth=spec.auth,
        cache=cache,
        limit=spec.limit,
        tolerate=spec.tolerate,
        **kind.compile(spec, names, env),
    )
