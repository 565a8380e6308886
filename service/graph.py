"""A flow as a graph: a Mermaid flowchart (one node per step, one edge per dependency),
or the same as JSON for the dashboard."""

from __future__ import annotations

from typing import Any

from service.expressions import Template
from service.flow import Flow, Step


def mermaid(flow: Flow) -> str:
    """The flow's steps left to right, each labelled with its condition and fan-out."""
    lines = ["flowchart LR"]
    for step in flow.steps.values():
        lines.append(f'    {step.name}["{_label(step)}"]')
    for step in flow.steps.values():
        lines.extend(f"    {dependency} --> {step.name}" for dependency in step.after)
    return "\n".join(lines) + "\n"


def described(flow: Flow) -> dict[str, Any]:
    """The flow's steps with their dependencies, conditions and fan-out, as JSON."""
    return {
        "name": flow.name,
        "description": flow.description,
        "steps": [
            {
                "name": step.name,
                "after": list(step.after),
                "when": source(step.when) if step.when is not None else None,
                "for_each": source(step.for_each) if step.for_each is not None else None,
                "max_concurrency": step.max_concurrency,
                "on_error": step.on_error,
            }
            for step in flow.steps.values()
        ],
    }


def _label(step: Step) -> str:
    parts = [step.name]
    if step.when is not None:
        parts.append(f"when {source(step.when)}")
    if step.for_each is not None:
        parts.append(f"for each of {source(step.for_each)}, {step.max_concurrency} at a time")
    if step.on_error == "continue":
        parts.append("on error: continue")
    return "<br/>".join(_escape(part) for part in parts)


def source(template: Template) -> str:
    """The expression as written in the flow."""
    return "".join(part if isinstance(part, str) else part.text for part in template.parts)


def _escape(text: str) -> str:
    # Mermaid labels in quotes take entity codes for characters that would end them.
    return (
        text.replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
    )
