"""A flow as a Mermaid flowchart: one node per step, one edge per dependency."""

from __future__ import annotations

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


def _label(step: Step) -> str:
    parts = [step.name]
    if step.when is not None:
        parts.append(f"when {_source(step.when)}")
    if step.for_each is not None:
        parts.append(f"for each of {_source(step.for_each)}, {step.max_concurrency} at a time")
    if step.on_error == "continue":
        parts.append("on error: continue")
    return "<br/>".join(_escape(part) for part in parts)


def _source(template: Template) -> str:
    return "".join(part if isinstance(part, str) else part.text for part in template.parts)


def _escape(text: str) -> str:
    # Mermaid labels in quotes take entity codes for characters that would end them.
    return (
        text.replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
    )
