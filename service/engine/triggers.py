"""Event triggers: a flow started by the messages published to a Pub/Sub topic.

A trigger's `when` and `input` are CEL over `event`, compiled when the flow loads:
`{"data": the message's data as JSON (as text when it is not JSON), "attributes",
"message_id", "publish_time"}`. An execution a trigger starts is named by the trigger
and the message id (`execution_id`): a redelivered message names the same one.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.bounds import JSONRefused, parse_json
from service.engine.expressions import ExpressionError, Names, Template, compile_value
from service.engine.flow_spec import FlowSpec
from service.engine.kinds.base import typed
from service.errors import FlowError

# Execution ids of triggered executions: uuid5(namespace, flow, trigger, message id).
TRIGGER_NAMESPACE = uuid.UUID("0b7d4a36-5d0e-4f43-9a2a-6c1f3e8a9d27")
EVENT = frozenset({"event"})


@dataclass(frozen=True, slots=True)
class Trigger:
    """A compiled trigger: its topic (as written), its filter and its input, over `event`."""

    name: str
    topic: str
    when: Template | None
    input: Any


def compile_triggers(spec: FlowSpec, env: Mapping[str, str], file: str) -> dict[str, Trigger]:
    """The flow's triggers (their input's fields checked with the spec); FlowError naming
    the field where an expression is wrong."""
    triggers = {}
    for n, trigger in enumerate(spec.triggers):
        where = f"triggers.{n}"
        try:
            when = None
            if trigger.when is not None:
                template = Template.parse(
                    trigger.when, Names(f"{where}.when", EVENT, frozenset()), env
                )
                when = typed(template, f"{where}.when", ("BOOL", "NULL"))
            made = compile_value(trigger.input, Names(f"{where}.input", EVENT, frozenset()), env)
        except ExpressionError as exc:
            raise FlowError(file, str(exc)) from None
        triggers[trigger.name] = Trigger(trigger.name, trigger.topic, when, made)
    return triggers


def event_of(
    data: bytes, attributes: Mapping[str, str], message_id: str, publish_time: str | None
) -> dict[str, Any]:
    """What `when` and `input` read of a message."""
    try:
        value: Any = parse_json(data) if data else None
    except JSONRefused:
        value = data.decode(errors="replace")
    return {
        "data": value,
        "attributes": dict(attributes),
        "message_id": message_id,
        "publish_time": publish_time,
    }


def execution_id(flow: str, trigger: str, message_id: str) -> str:
    """The execution a message starts: the same for each of its redeliveries."""
    return str(uuid.uuid5(TRIGGER_NAMESPACE, f"{flow}\n{trigger}\n{message_id}"))
