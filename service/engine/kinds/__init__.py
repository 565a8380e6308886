"""The kinds of step, one module each; the runner, the loader and the graph know a kind
only through `Kind` (base.py) and this registry.

    call      call.py      one call, or one per item of `for_each`; cached, shaped
    poll      poll.py      a call that starts a long-running operation, polled until done
    callback  callback.py  a call answered later, at a callback URL
    sleep     sleep.py     no call: a time to wait for
    flow      flow.py      another flow, run as child executions, once or per item

Every kind but `call` waits: inline while its wait is short, else the step is left
`waiting` with its `wake_at` and the execution suspends once nothing else can run
(service/engine/runner.py); it resumes where it stopped. A step resumed before it is
due (a redelivered message, say) stays as it was.
"""

from __future__ import annotations

from collections.abc import Mapping

from service.engine.expressions import ExpressionError
from service.engine.flow_spec import StepSpec
from service.engine.kinds.base import Kind
from service.engine.kinds.call import Call
from service.engine.kinds.callback import Callback
from service.engine.kinds.flow import Flow
from service.engine.kinds.poll import Poll
from service.engine.kinds.sleep import Sleep
from service.engine.step import StepKind

KINDS: Mapping[StepKind, Kind] = {
    kind.name: kind for kind in (Call(), Poll(), Callback(), Sleep(), Flow())
}
DEFAULT = KINDS["call"]


def kind_of(spec: StepSpec) -> Kind:
    """The kind a step's fields make it, once they are checked: one kind per step (the
    fields of at most one), `call:` for each kind that calls and none for one that does
    not, no other kind's options, `for_each` only on a kind that fans out, `cache` only
    on one that does not wait, `limit` only on one that calls."""
    fields = [f for kind in KINDS.values() for f in kind.fields if getattr(spec, f) is not None]
    if len(fields) > 1:
        raise ExpressionError(f"{fields[1]}: a step waits one way; it has {' and '.join(fields)}")
    kind = next((k for k in KINDS.values() if fields and fields[0] in k.fields), DEFAULT)
    if not kind.calls and spec.call is not None:
        raise ExpressionError(f"{fields[0]}: a {kind.name} step makes no call; remove 'call'")
    if kind.calls and spec.call is None:
        raise ExpressionError("call: required (a URL), unless the step sleeps or runs a flow")
    others = {f for k in KINDS.values() for f in k.options} - set(kind.options)
    for field in sorted(others):
        if getattr(spec, field) is not None:
            raise ExpressionError(f"{field}: only a {_owner(field)} step takes it")
    if not kind.fans_out and spec.for_each is not None:
        raise ExpressionError(
            f"{fields[0]}: a for_each step does not wait; wait in a step of its own"
        )
    if kind.waits and spec.cache is not None:
        raise ExpressionError("cache: a step that waits is not cached")
    if not kind.calls and spec.limit is not None:
        raise ExpressionError(f"limit: a {kind.name} step makes no call to limit")
    return kind


def _owner(field: str) -> str:
    return next(kind.name for kind in KINDS.values() if field in kind.options)
