"""A call: `call: URL` with its `body`, once, or once per item of `for_each`
(`max_concurrency` at a time), its answer kept in the step cache where it has `cache:`,
shaped by `output`. It never waits. A re-driven `for_each` step calls again only the
items that did not succeed. With `variants:`, each call goes to the URL its key's hash
falls on (`chosen`), retries and all, its name recorded on the step or item; a cached
answer is reused within its variant only. With `shadow:`, each call that is made (not
a cached answer) sends its copy to the candidate (service/engine/shadows.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from service.engine.calls import CallResult
from service.engine.expressions import (
    EvaluationError,
    ExpressionError,
    Names,
    Template,
    render_value,
)
from service.engine.flow_spec import PRIMARY, StepSpec
from service.engine.kinds.base import (
    Turn,
    failed,
    failed_items,
    fixed,
    fixed_url,
    items_of,
    succeeded_items,
    typed,
)
from service.engine.step import Shadow, Step, StepKind, Variant, bucket
from service.execution import ItemResult, StepResult, StepStatus, now


class Call:
    name: StepKind = "call"
    fields: tuple[str, ...] = ()
    options: tuple[str, ...] = ("variants", "variant_key", "shadow")
    calls = True
    waits = False
    fans_out = True
    replayed = False
    scope = frozenset[str]()

    def compile(self, spec: StepSpec, names: Names, env: Mapping[str, str]) -> dict[str, Any]:
        each = frozenset({"item"} if spec.for_each is not None else ())
        fields = _variants(spec, names, env, each)
        if spec.shadow is not None:
            fields["shadow"] = _shadow(spec, names, env, each)
        return fields

    async def start(self, step: Step, turn: Turn) -> StepResult:
        result = turn.result
        try:
            items = items_of(step, turn.scope) if step.for_each is not None else []
        except ValueError as exc:
            return failed(result, str(exc))
        started = time.perf_counter()
        if step.for_each is None:
            call = await _call(step, turn, turn.scope, step.name)
            result.cached, result.cached_from = call.cached_from is not None, call.cached_from
            result.variant = call.variant
        else:
            call = await _fan_out(step, turn, items)
        result.finished_at = now()
        result.duration_ms = round((time.perf_counter() - started) * 1000)
        result.attempts = call.attempts
        result.output = call.output
        result.error = call.error
        result.status = StepStatus.FAILED if call.error else StepStatus.SUCCEEDED
        return result

    async def resume(self, step: Step, turn: Turn) -> StepResult:
        return failed(turn.result, "a call does not wait")

    def described(self, step: Step) -> str | None:
        return None


def _variants(
    spec: StepSpec, names: Names, env: Mapping[str, str], each: frozenset[str]
) -> dict[str, Any]:
    if spec.variants is None:
        if spec.variant_key is not None:
            raise ExpressionError("variant_key: only a step with variants has one")
        return {}
    named = [variant.name for variant in spec.variants]
    if len(set(named)) != len(named):
        raise ExpressionError("variants: each name may be used once")
    total = sum(variant.share for variant in spec.variants)
    if total > 100:
        raise ExpressionError(f"variants: their weights add up to {total:g}%, past 100%")
    variants = []
    for variant in spec.variants:
        url = fixed_url(f"variants.{variant.name}.call", variant.call, env)
        where = f"variants.{variant.name}.audience"
        audience = fixed(where, variant.audience, env) if variant.audience else url
        variants.append(Variant(variant.name, url, audience, variant.share))
    key = None
    if spec.variant_key is not None:
        scope = Names("variant_key", names.roots | each, names.steps, names.flow_steps)
        key = Template.parse(spec.variant_key, scope, env)
    return {"variants": tuple(variants), "variant_key": key}


def _shadow(spec: StepSpec, names: Names, env: Mapping[str, str], each: frozenset[str]) -> Shadow:
    assert spec.shadow is not None
    url = fixed_url("shadow.call", spec.shadow.call, env)
    audience = fixed("shadow.audience", spec.shadow.audience, env) if spec.shadow.audience else url
    compare = None
    if spec.shadow.compare is not None:
        roots = names.roots | each | {"response", "shadow"}
        scope = Names("shadow.compare", roots, names.steps, names.flow_steps)
        template = Template.parse(spec.shadow.compare, scope, env)
        compare = typed(template, "shadow.compare", ("BOOL",))
    timeout = spec.shadow.timeout_s or spec.timeout_s
    return Shadow(url, audience, spec.shadow.share, compare, timeout)


async def _fan_out(step: Step, turn: Turn, items: list[Any]) -> CallResult:
    """One call per item; the step's outcome shows each item's as it ends."""
    previous = turn.previous
    kept = succeeded_items(previous, len(items))
    outputs: list[Any] = [None] * len(items)
    records = [ItemResult(status=StepStatus.RUNNING) for _ in items]
    if previous is not None and kept:
        for i in kept:
            outputs[i], records[i] = previous.output[i], previous.items[i]  # type: ignore[index]
    turn.result.output, turn.result.items = outputs, records
    limit = asyncio.Semaphore(step.max_concurrency)

    async def one(index: int, item: Any) -> None:
        async with limit:
            record = records[index]
            record.started_at = now()
            call = await _call(step, turn, {**turn.scope, "item": item}, f"{step.name}#{index}")
            outputs[index] = call.output
            record.attempts, record.error = call.attempts, call.error
            record.cached, record.cached_from = call.cached_from is not None, call.cached_from
            record.variant = call.variant
            record.status = StepStatus.FAILED if call.error else StepStatus.SUCCEEDED
            record.finished_at = now()

    await asyncio.gather(*(one(i, item) for i, item in enumerate(items) if i not in kept))
    errors = [f"[{i}] {record.error}" for i, record in enumerate(records) if record.error]
    error = failed_items(step, len(errors), len(records), errors[0] if errors else "")
    attempts = sum(records[i].attempts for i in range(len(items)) if i not in kept)
    return CallResult(output=outputs, error=error, attempts=attempts)


async def _call(step: Step, turn: Turn, scope: dict[str, Any], key: str) -> CallResult:
    """One call with its body made from `scope` (or the answer the step's cache kept);
    the answer shaped by the step's `output`. `key` names the call among the step's
    (its name, or `step#index`), for its shadow."""
    caller, deadline = turn.tools.caller, turn.deadline
    try:
        variant = chosen(step, scope, turn.execution.execution_id)
    except EvaluationError as exc:
        return CallResult(None, str(exc), 0)
    name = variant.name if variant is not None else PRIMARY if step.variants else None

    def shaped(call: CallResult) -> CallResult:
        if call.error is not None or step.output is None:
            return call
        try:
            output = render_value(step.output, {**scope, "response": call.output})
        except EvaluationError as exc:
            return replace(call, output=None, error=str(exc))
        return replace(call, output=output)

    async def called() -> CallResult:
        if step.shadow is None:
            return await caller.call_with(step, scope, deadline, variant)
        try:
            body = render_value(step.body, scope)
        except EvaluationError as exc:
            return CallResult(None, str(exc), 0)
        execution = turn.execution
        shadow = turn.tools.shadows.start(
            step, execution.flow, execution.execution_id, key, body, scope
        )
        call = None
        try:
            call = await caller.call(step, body, deadline, variant=variant)
        finally:
            if shadow is not None:
                shadow.answered(call)
        return call

    if step.cache is None:
        call = shaped(await called())
    else:  # a cached answer is reused as it is: no call, no shadow
        call = await turn.tools.cache.through(
            turn.execution.flow,
            step,
            scope,
            turn.execution.execution_id,
            called,
            shaped,
            variant=name,
        )
    return replace(call, variant=name) if name is not None else call


def chosen(step: Step, scope: dict[str, Any], execution_id: str) -> Variant | None:
    """The variant a call of `step` goes to (None: its own `call:`), by a hash of its
    `variant_key` (else the execution id) against the weights: a key always gets the
    same one, in every step with the same weights (one cohort of canary users)."""
    if not step.variants:
        return None
    key = step.variant_key.render(scope) if step.variant_key is not None else execution_id
    falls, edge = bucket(key), 0.0
    for variant in step.variants:
        edge += variant.share * 100
        if falls < edge:
            return variant
    return None
