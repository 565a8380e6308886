"""The flow engine against in-memory ML functions (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from service.execution import ExecutionStatus, StepStatus
from tests.support.functions import Functions, flow_from, run

DIAMOND = """
steps:
  a: {call: 'http://fn/a'}
  b: {call: 'http://fn/b', after: [a]}
  c: {call: 'http://fn/c', after: [a]}
  d: {call: 'http://fn/d', after: [b, c]}
"""


async def test_steps_start_after_their_dependencies_finish(tmp_path: Path) -> None:
    functions = Functions(delay_s=0.02)
    execution = await run(flow_from(tmp_path, DIAMOND), functions)
    assert execution.status == ExecutionStatus.SUCCEEDED
    (a,), (b,), (c,), (d,) = (functions.intervals[f"/{n}"] for n in "abcd")
    assert b[0] >= a[1] and c[0] >= a[1]
    assert d[0] >= max(b[1], c[1])


async def test_independent_steps_run_at_the_same_time(tmp_path: Path) -> None:
    """b and c overlap, so the execution takes its critical path, not the sum of its calls."""
    functions = Functions(delay_s=0.05)
    await run(flow_from(tmp_path, DIAMOND), functions)
    (b,), (c,) = functions.intervals["/b"], functions.intervals["/c"]
    assert b[0] < c[1] and c[0] < b[1]
    assert functions.max_in_flight == 2


async def test_a_false_when_skips_the_step_and_its_dependents_still_run(tmp_path: Path) -> None:
    flow = flow_from(
        tmp_path,
        """
steps:
  a: {call: 'http://fn/a', when: '${input.do_a}'}
  b: {call: 'http://fn/b', after: [a]}
""",
    )
    execution = await run(flow, Functions(), {"do_a": False})
    assert execution.steps["a"].status == StepStatus.SKIPPED
    assert execution.steps["b"].status == StepStatus.SUCCEEDED
    assert execution.status == ExecutionStatus.SUCCEEDED


async def test_a_failed_step_skips_its_dependents_and_fails_the_execution(tmp_path: Path) -> None:
    functions = Functions()
    functions.statuses["/b"] = [400]
    execution = await run(flow_from(tmp_path, DIAMOND), functions)
    assert execution.steps["b"].status == StepStatus.FAILED
    assert execution.steps["c"].status == StepStatus.SUCCEEDED
    assert execution.steps["d"].status == StepStatus.SKIPPED
    assert execution.steps["d"].error == "needs failed step b"
    assert execution.status == ExecutionStatus.FAILED
    assert execution.error is not None and "step b failed: HTTP 400" in execution.error
    assert "/d" not in functions.intervals


async def test_on_error_continue_leaves_the_execution_partial(tmp_path: Path) -> None:
    flow = flow_from(
        tmp_path,
        """
steps:
  a: {call: 'http://fn/a', on_error: continue}
  b: {call: 'http://fn/b'}
""",
    )
    functions = Functions()
    functions.statuses["/a"] = [400]
    execution = await run(flow, functions)
    assert execution.status == ExecutionStatus.PARTIAL
    assert execution.steps["b"].status == StepStatus.SUCCEEDED


async def test_a_resumed_execution_runs_a_new_step_before_one_that_already_succeeded(
    tmp_path: Path,
) -> None:
    """Re-driven after an edit that put a new step a before b: a runs, b is kept as it was."""
    before = flow_from(tmp_path, "steps:\n  b: {call: 'http://fn/b'}\n")
    functions = Functions()
    first = await run(before, functions)
    edited = flow_from(
        tmp_path, "steps:\n  a: {call: 'http://fn/a'}\n  b: {call: 'http://fn/b', after: [a]}\n"
    )
    second = await run(edited, functions, execution=first.redriven())
    assert second.status == ExecutionStatus.SUCCEEDED
    assert len(functions.intervals["/a"]) == 1 and len(functions.intervals["/b"]) == 1


FAN_OUT = """
steps:
  list: {call: 'http://fn/list'}
  each:
    call: 'http://fn/each'
    after: [list]
    for_each: '${input.items}'
    max_concurrency: 4
    body: {id: '${item.id}', user: '${input.user}'}
"""


async def test_for_each_calls_once_per_item_with_bounded_concurrency(tmp_path: Path) -> None:
    functions = Functions(delay_s=0.01)
    items = [{"id": n} for n in range(25)]
    execution = await run(flow_from(tmp_path, FAN_OUT), functions, {"items": items, "user": "u"})
    assert execution.steps["each"].status == StepStatus.SUCCEEDED
    assert sorted(body["id"] for body in functions.bodies["/each"]) == list(range(25))  # type: ignore[index]
    assert functions.max_in_flight == 4
    outputs = execution.steps["each"].output
    assert [output["body"]["id"] for output in outputs] == list(range(25))


async def test_for_each_over_something_else_than_a_list_fails_the_step(tmp_path: Path) -> None:
    execution = await run(flow_from(tmp_path, FAN_OUT), Functions(), {"items": None})
    assert execution.steps["each"].status == StepStatus.FAILED
    assert execution.steps["each"].error == "for_each: expected a list, got null"


async def test_for_each_reports_which_items_failed(tmp_path: Path) -> None:
    functions = Functions()
    functions.statuses["/each"] = [200, 404]
    items = [{"id": 1}, {"id": 2}, {"id": 3}]
    execution = await run(
        flow_from(tmp_path, FAN_OUT.replace("max_concurrency: 4", "max_concurrency: 1")),
        functions,
        {"items": items},
    )
    each = execution.steps["each"]
    assert each.status == StepStatus.FAILED
    assert each.error is not None and each.error.startswith("1 of 3 items failed: [1] HTTP 404")
    assert each.output[0] is not None and each.output[1] is None


RETRIED = """
steps:
  a:
    call: 'http://fn/a'
    retry: {maximum_attempts: 3, initial_interval: 0.001, maximum_interval: 0.001}
"""


@pytest.mark.parametrize("status", [408, 429, 502, 503, 504])
async def test_retryable_statuses_are_retried(tmp_path: Path, status: int) -> None:
    functions = Functions()
    functions.statuses["/a"] = [status, status]
    execution = await run(flow_from(tmp_path, RETRIED), functions)
    assert execution.steps["a"].status == StepStatus.SUCCEEDED
    assert execution.steps["a"].attempts == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 500])
async def test_other_statuses_are_final(tmp_path: Path, status: int) -> None:
    functions = Functions()
    functions.statuses["/a"] = [status]
    execution = await run(flow_from(tmp_path, RETRIED), functions)
    assert execution.steps["a"].status == StepStatus.FAILED
    assert execution.steps["a"].attempts == 1
    assert len(functions.intervals["/a"]) == 1


async def test_attempts_stop_at_the_policy_maximum(tmp_path: Path) -> None:
    functions = Functions()
    functions.statuses["/a"] = [503, 503, 503, 503]
    execution = await run(flow_from(tmp_path, RETRIED), functions)
    assert execution.steps["a"].attempts == 3
    assert execution.steps["a"].error == "HTTP 503: scripted"


async def test_retry_after_is_honoured(tmp_path: Path) -> None:
    functions = Functions()
    functions.statuses["/a"] = [429]
    functions.headers["/a"] = {"Retry-After": "1"}
    execution = await run(flow_from(tmp_path, RETRIED), functions)
    (first, second) = functions.intervals["/a"]
    assert second[0] - first[1] >= 1.0
    assert execution.steps["a"].status == StepStatus.SUCCEEDED


async def test_no_retry_waits_past_the_execution_deadline(tmp_path: Path) -> None:
    """A Retry-After beyond FLOW_TIMEOUT_S ends the step at once instead of waiting."""
    functions = Functions()
    functions.statuses["/a"] = [503]
    functions.headers["/a"] = {"Retry-After": "30"}
    started = time.perf_counter()
    execution = await run(flow_from(tmp_path, RETRIED), functions, timeout_s=5)
    assert time.perf_counter() - started < 5
    assert execution.steps["a"].attempts == 1
    assert execution.steps["a"].status == StepStatus.FAILED


async def test_connect_errors_are_retried(tmp_path: Path) -> None:
    attempts = []

    async def refuse_then_answer(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        if len(attempts) < 3:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"ok": True})

    execution = await run(flow_from(tmp_path, RETRIED), refuse_then_answer)
    assert execution.steps["a"].status == StepStatus.SUCCEEDED
    assert execution.steps["a"].attempts == 3


async def test_a_step_slower_than_its_timeout_fails_after_its_attempts(tmp_path: Path) -> None:
    flow = flow_from(
        tmp_path,
        """
steps:
  a:
    call: 'http://fn/a'
    timeout_s: 0.05
    retry: {maximum_attempts: 2, initial_interval: 0.001}
""",
    )

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(1)
        return httpx.Response(200)

    async def timing_out(request: httpx.Request) -> httpx.Response:
        # MockTransport does not apply httpx timeouts; enforce the request's own.
        timeout = request.extensions["timeout"]["read"]
        try:
            async with asyncio.timeout(timeout):
                return await slow(request)
        except TimeoutError:
            raise httpx.ReadTimeout("timed out", request=request) from None

    execution = await run(flow, timing_out)
    assert execution.steps["a"].status == StepStatus.FAILED
    assert execution.steps["a"].attempts == 2
    assert execution.steps["a"].error == "timed out after 0.05 s"


async def test_the_execution_timeout_fails_what_is_still_running(tmp_path: Path) -> None:
    flow = flow_from(
        tmp_path, "steps:\n  a: {call: 'http://fn/a'}\n  b: {call: 'http://fn/b', after: [a]}\n"
    )
    started = time.perf_counter()
    execution = await run(flow, Functions(delay_s=10), timeout_s=0.2)
    assert time.perf_counter() - started < 5
    assert execution.status == ExecutionStatus.FAILED
    assert execution.error == "timed out after 0.2 s (FLOW_TIMEOUT_S)"
    assert execution.steps["a"].status == StepStatus.FAILED
    assert "b" not in execution.steps


async def test_each_call_carries_the_rendered_body(tmp_path: Path) -> None:
    flow = flow_from(
        tmp_path,
        """
steps:
  a: {call: 'http://fn/a', body: {user_id: '${input.user_id}', tag: 'x-${input.user_id}'}}
  b: {call: 'http://fn/b', after: [a], body: {from_a: '${steps.a.output.path}'}}
""",
    )
    functions = Functions()
    await run(flow, functions, {"user_id": "u7"})
    assert functions.bodies["/a"] == [{"user_id": "u7", "tag": "x-u7"}]
    assert functions.bodies["/b"] == [{"from_a": "/a"}]


async def test_an_answer_over_the_size_limit_fails_the_step_without_retries(
    tmp_path: Path,
) -> None:
    """What a function answers is kept in the document, so it is bounded (MAX_ANSWER_BYTES)."""
    from service.engine.outbound import MAX_ANSWER_BYTES

    async def huge(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"x" * (MAX_ANSWER_BYTES + 1))

    execution = await run(flow_from(tmp_path, RETRIED), huge)
    assert execution.steps["a"].status == StepStatus.FAILED
    assert execution.steps["a"].error == f"answer larger than {MAX_ANSWER_BYTES} bytes"
    assert execution.steps["a"].attempts == 1


TOLERANT = FAN_OUT.replace(
    "max_concurrency: 4", "max_concurrency: 1\n    tolerate: {failures: TOLERATE}"
)


@pytest.mark.parametrize(
    ("tolerate", "failing", "ends"),
    [
        ("2", 2, StepStatus.SUCCEEDED),
        ("2", 3, StepStatus.FAILED),
        ("'20%'", 2, StepStatus.SUCCEEDED),  # 2 of 10 is 20 %
        ("'20%'", 3, StepStatus.FAILED),
        ("0", 0, StepStatus.SUCCEEDED),
        ("0", 1, StepStatus.FAILED),
    ],
)
async def test_a_for_each_tolerates_failed_items_up_to_its_count_or_share(
    tmp_path: Path, tolerate: str, failing: int, ends: StepStatus
) -> None:
    """Within `tolerate`, the step and the execution succeed with the failed items in view
    (null outputs, their errors); beyond it the step fails, saying so."""
    functions = Functions()
    functions.statuses["/each"] = [404] * failing
    items = [{"id": n} for n in range(10)]
    flow = flow_from(tmp_path, TOLERANT.replace("TOLERATE", tolerate))
    execution = await run(flow, functions, {"items": items})
    each = execution.steps["each"]
    assert each.status == ends
    assert each.items is not None
    failed = [i for i, item in enumerate(each.items) if item.status == StepStatus.FAILED]
    assert failed == list(range(failing))
    assert all(each.output[i] is None for i in failed)
    assert all(each.items[i].error == "HTTP 404: scripted" for i in failed)
    if ends == StepStatus.SUCCEEDED:
        assert each.error is None
        assert execution.status == ExecutionStatus.SUCCEEDED
    else:
        allowed = tolerate.strip("'")
        assert each.error is not None and each.error.startswith(
            f"{failing} of 10 items failed, more than tolerate allows ({allowed}): [0] HTTP 404"
        )
        assert execution.status == ExecutionStatus.FAILED
