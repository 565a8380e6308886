"""A flow as a graph: a Mermaid flowchart (one node per step, one edge per dependency),
or the same as JSON for the dashboard."""

from __future__ import annotations

import json
from typing import Any

from service.engine.expressions import Template, source_of, templates_in
from service.engine.flow import Flow
from service.engine.kinds import KINDS
from service.engine.kinds.base import one_line
from service.engine.step import Step


def mermaid(flow: Flow) -> str:
    """The flow's steps left to right, each labelled with its condition, fan-out (and
    filter) and output; the flow's result last, with a dotted edge from each step it reads."""
    lines = ["flowchart LR"]
    for step in flow.steps.values():
        lines.append(f'    {step.name}["{_label(step)}"]')
    result = "result"
    while result in flow.steps:
        result += "_"
    if flow.result is not None:
        lines.append(f'    {result}(["{_escape("result " + _shape(flow.result))}"])')
    for step in flow.steps.values():
        lines.extend(f"    {dependency} --> {step.name}" for dependency in step.after)
    if flow.result is not None:
        read = {name for t in templates_in(flow.result) for e in t.expressions for name in e.steps}
        lines.extend(f"    {name} -.-> {result}" for name in flow.steps if name in read)
    return "\n".join(lines) + "\n"


def described(flow: Flow) -> dict[str, Any]:
    """The flow's steps with their dependencies, conditions and fan-out, as JSON."""
    return {
        "name": flow.name,
        "description": flow.description,
        "steps": [
            {
                "name": step.name,
                "kind": step.kind,
                "after": list(step.after),
                "when": source_of(step.when),
                "for_each": source_of(step.for_each),
                "max_concurrency": step.max_concurrency,
                "tolerate": step.tolerate.failures if step.tolerate else None,
                "on_error": step.on_error,
                "output": source_of(step.output),
                "waits": _wait(step),
            }
            for step in flow.steps.values()
        ],
        "result": source_of(flow.result),
        "triggers": [
            {"name": trigger.name, "topic": trigger.topic, "when": source_of(trigger.when)}
            for trigger in flow.triggers.values()
        ],
    }


def _label(step: Step) -> str:
    parts = [step.name]
    if step.when is not None:
        parts.append(f"when {one_line(step.when.source)}")
    if step.for_each is not None:
        each = one_line(step.for_each.source)
        parts.append(f"for each of {each}, {step.max_concurrency} at a time")
        if step.tolerate is not None:
            parts.append(f"tolerates {step.tolerate.failures} failed")
    if (wait := _wait(step)) is not None:
        parts.append(wait)
    if step.output is not None:
        parts.append(f"output {_shape(step.output)}")
    if step.on_error == "continue":
        parts.append("on error: continue")
    return "<br/>".join(_escape(part) for part in parts)


def _wait(step: Step) -> str | None:
    """What the step does besides a call, in a few words; None for a plain call."""
    return KINDS[step.kind].described(step)


def _shape(value: Any) -> str:
    """A shaped value in a few words: its keys, or its expression."""
    if isinstance(value, dict):
        return "{" + ", ".join(value) + "}"
    if isinstance(value, list):
        return f"[{len(value)} values]"
    return one_line(source_of(value) if isinstance(value, Template) else json.dumps(value))


def _escape(text: str) -> str:
    # Mermaid labels in quotes take entity codes for characters that would end them.
    return (
        text.replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
    )
