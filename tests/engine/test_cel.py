"""CEL in flows: conditions, filters, shaped outputs and results, as the engine runs them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from service.engine.expressions import ITERATION_BUDGET, MAX_VALUE_BYTES, Names, Template
from service.execution import ExecutionStatus, StepStatus
from tests.support.functions import Functions, flow_from, run

VACANCIES = [
    {"vacancy_id": "v1", "score": 0.9, "tags": ["sql", "python"]},
    {"vacancy_id": "v2", "score": 0.75, "tags": ["go"]},
    {"vacancy_id": "v3", "score": 0.4, "tags": []},
    {"vacancy_id": "v4", "score": 1, "tags": ["python"]},  # an int: compared with doubles
]

MATCHING = """
input:
  min_score: {type: number}
steps:
  match: {call: 'http://fn/match'}
  analyse:
    call: 'http://fn/analyse'
    after: [match]
    for_each: >-
      ${input.min_score == null
        ? steps.match.output.vacancies
        : steps.match.output.vacancies.filter(v, v.score >= input.min_score)}
    body:
      vacancy_id: ${item.vacancy_id}
      label: vacancy ${item.vacancy_id} of ${size(steps.match.output.vacancies)}
      percent: ${double(item.score) * 100.0}
      python: ${item.tags.exists(t, t == "python")}
      tagged: ${item.tags.all(t, size(t) >= 2) && size(item.tags) > 0}
      grade: '${item.score >= 0.8 ? "high" : "low"}'
      seniority: '${has(item.level) ? item.level : "any"}'
    output:
      id: ${item.vacancy_id}
      fit: ${response.body.percent}
  summary:
    call: 'http://fn/summary'
    after: [analyse]
    when: ${steps.analyse.output.exists(a, a.fit > 80.0)}
    body:
      ids: ${steps.analyse.output.map(a, a.id)}
result:
  analysed: ${steps.analyse.output}
  count: ${size(steps.analyse.output)}
  summarised: ${steps.summary.status == "succeeded"}
"""


def matching() -> Functions:
    functions = Functions()
    functions.answers["/match"] = {"vacancies": VACANCIES}
    return functions


async def test_a_filter_in_for_each_calls_only_the_items_it_keeps(tmp_path: Path) -> None:
    functions = matching()
    execution = await run(flow_from(tmp_path, MATCHING), functions, {"min_score": 0.75})
    assert execution.status == ExecutionStatus.SUCCEEDED
    called = sorted(body["vacancy_id"] for body in functions.bodies["/analyse"])  # type: ignore[index]
    assert called == ["v1", "v2", "v4"]


async def test_without_the_optional_input_every_item_is_called(tmp_path: Path) -> None:
    functions = matching()
    execution = await run(flow_from(tmp_path, MATCHING), functions, {})
    assert execution.status == ExecutionStatus.SUCCEEDED
    assert len(functions.bodies["/analyse"]) == 4


async def test_operators_macros_and_string_building_make_each_body(tmp_path: Path) -> None:
    functions = matching()
    await run(flow_from(tmp_path, MATCHING), functions, {})
    bodies = {body["vacancy_id"]: body for body in functions.bodies["/analyse"]}  # type: ignore[index]
    assert bodies["v1"] == {
        "vacancy_id": "v1",
        "label": "vacancy v1 of 4",
        "percent": 90.0,
        "python": True,
        "tagged": True,
        "grade": "high",
        "seniority": "any",
    }
    assert bodies["v2"]["python"] is False and bodies["v2"]["grade"] == "low"
    assert bodies["v3"]["tagged"] is False  # `all` over nothing is true; size(...) > 0 is not
    assert bodies["v4"]["percent"] == 100.0 and bodies["v4"]["grade"] == "high"


async def test_output_keeps_only_its_shape_of_each_answer(tmp_path: Path) -> None:
    execution = await run(flow_from(tmp_path, MATCHING), matching(), {"min_score": 0.8})
    assert execution.steps["analyse"].output == [
        {"id": "v1", "fit": 90.0},
        {"id": "v4", "fit": 100.0},
    ]


async def test_result_is_made_from_the_ended_steps(tmp_path: Path) -> None:
    functions = matching()
    execution = await run(flow_from(tmp_path, MATCHING), functions, {"min_score": 0.8})
    assert execution.result == {
        "analysed": [{"id": "v1", "fit": 90.0}, {"id": "v4", "fit": 100.0}],
        "count": 2,
        "summarised": True,
    }
    assert functions.bodies["/summary"] == [{"ids": ["v1", "v4"]}]


async def test_a_condition_on_an_earlier_output_skips_the_step(tmp_path: Path) -> None:
    functions = matching()
    execution = await run(flow_from(tmp_path, MATCHING), functions, {"min_score": 1.5})
    assert execution.steps["analyse"].output == []
    assert execution.steps["summary"].status == StepStatus.SKIPPED
    assert execution.result == {"analysed": [], "count": 0, "summarised": False}


async def test_a_type_error_fails_the_step_naming_field_expression_and_reason(
    tmp_path: Path,
) -> None:
    flow = flow_from(tmp_path, MATCHING)
    functions = Functions()
    functions.answers["/match"] = {"vacancies": [{"vacancy_id": "v1", "score": "high"}]}
    execution = await run(flow, functions, {"min_score": 0.5})
    analyse = execution.steps["analyse"]
    assert analyse.status == StepStatus.FAILED
    assert analyse.error is not None
    assert analyse.error.startswith("for_each: ${input.min_score == null")
    assert "No matching overloads found : _>=_(string, double)" in analyse.error
    assert "/analyse" not in functions.bodies
    assert execution.status == ExecutionStatus.FAILED
    assert execution.result is None  # a failed execution has no result


async def test_a_missing_key_is_null_in_a_path_and_an_error_in_cel(tmp_path: Path) -> None:
    flow = flow_from(
        tmp_path,
        """
steps:
  a:
    call: 'http://fn/a'
    body: {path: '${input.absent}', deep: '${input.absent.deeper[3]}', has: '${has(input.absent)}'}
  b:
    call: 'http://fn/b'
    body: {v: '${input.absent + 1}'}
""",
    )
    functions = Functions()
    execution = await run(flow, functions, {})
    assert functions.bodies["/a"] == [{"path": None, "deep": None, "has": False}]
    assert execution.steps["b"].status == StepStatus.FAILED
    assert execution.steps["b"].error == (
        'body.v: ${input.absent + 1}: Key not found in map : "absent"'
    )
    assert "/b" not in functions.bodies


async def test_a_failing_output_fails_the_step_and_keeps_nothing_of_the_answer(
    tmp_path: Path,
) -> None:
    flow = flow_from(
        tmp_path,
        "steps:\n  a: {call: 'http://fn/a', output: '${size(response.missing)}'}\n",
    )
    execution = await run(flow, Functions(), {})
    a = execution.steps["a"]
    assert a.status == StepStatus.FAILED and a.attempts == 1
    assert a.output is None
    assert a.error == 'output: ${size(response.missing)}: Key not found in map : "missing"'


async def test_a_failing_item_body_fails_that_item_only(tmp_path: Path) -> None:
    flow = flow_from(
        tmp_path,
        """
steps:
  each:
    call: 'http://fn/each'
    for_each: ${input.items}
    body: {half: '${100 / item}'}
""",
    )
    functions = Functions()
    execution = await run(flow, functions, {"items": [4, 0, 5]})
    each = execution.steps["each"]
    assert each.status == StepStatus.FAILED
    assert each.error == "1 of 3 items failed: [1] body.half: ${100 / item}: divide by zero"
    assert sorted(body["half"] for body in functions.bodies["/each"]) == [20, 25]  # type: ignore[index]
    assert each.items is not None and each.items[1].attempts == 0


async def test_a_failing_result_fails_the_execution_with_its_reason(tmp_path: Path) -> None:
    flow = flow_from(
        tmp_path, "steps:\n  a: {call: 'http://fn/a'}\nresult: '${size(steps.a.output.nothing)}'\n"
    )
    execution = await run(flow, Functions(), {})
    assert execution.steps["a"].status == StepStatus.SUCCEEDED
    assert execution.status == ExecutionStatus.FAILED
    assert execution.error == (
        'result: ${size(steps.a.output.nothing)}: Key not found in map : "nothing"'
    )


async def test_a_when_that_fails_fails_its_step(tmp_path: Path) -> None:
    flow = flow_from(tmp_path, "steps:\n  a: {call: 'http://fn/a', when: '${input.n > 1}'}\n")
    execution = await run(flow, Functions(), {"n": "two"})
    assert execution.steps["a"].status == StepStatus.FAILED
    assert "when: ${input.n > 1}: No matching overloads found" in (execution.steps["a"].error or "")


async def test_when_keeps_the_truthiness_of_a_plain_path(tmp_path: Path) -> None:
    flow = flow_from(tmp_path, "steps:\n  a: {call: 'http://fn/a', when: '${input.items}'}\n")
    skipped = await run(flow, Functions(), {"items": []})
    ran = await run(flow, Functions(), {"items": ["x"]})
    assert skipped.steps["a"].status == StepStatus.SKIPPED
    assert ran.steps["a"].status == StepStatus.SUCCEEDED


async def test_nested_comprehensions_stop_at_the_iteration_budget(tmp_path: Path) -> None:
    flow = flow_from(
        tmp_path,
        "steps:\n  a:\n    call: 'http://fn/a'\n"
        "    body: {pairs: '${input.items.map(x, input.items.map(y, x * y))}'}\n",
    )
    functions = Functions()
    execution = await run(flow, functions, {"items": list(range(200))})  # 40,200 iterations
    assert execution.steps["a"].status == StepStatus.FAILED
    assert execution.steps["a"].error == (
        "body.pairs: ${input.items.map(x, input.items.map(y, x * y))}: "
        f"more than {ITERATION_BUDGET} comprehension iterations (CEL's budget)"
    )
    small = await run(flow, functions, {"items": list(range(3))})
    assert small.steps["a"].status == StepStatus.SUCCEEDED
    assert functions.bodies["/a"] == [{"pairs": [[0, 0, 0], [0, 1, 2], [0, 2, 4]]}]


async def test_a_result_bigger_than_the_bound_fails_the_step(tmp_path: Path) -> None:
    flow = flow_from(
        tmp_path,
        "steps:\n  a: {call: 'http://fn/a', body: {v: '${input.items.map(i, input.big)}'}}\n",
    )
    big = "x" * 100_000
    execution = await run(flow, Functions(), {"items": list(range(101)), "big": big})
    assert execution.steps["a"].error == (
        f"body.v: ${{input.items.map(i, input.big)}}: the result is larger than "
        f"{MAX_VALUE_BYTES} bytes as JSON"
    )


async def test_values_json_cannot_hold_fail_and_timestamps_become_text(tmp_path: Path) -> None:
    flow = flow_from(
        tmp_path,
        """
steps:
  a:
    call: 'http://fn/a'
    body:
      at: '${timestamp("2026-11-26T07:00:00Z") + duration("90s")}'
      took: '${duration("1.5s")}'
      keys: '${{1: "one", 2: [true]}}'
  b: {call: 'http://fn/b', body: {nan: '${0.0 / 0.0}'}}
  c: {call: 'http://fn/c', body: {raw: '${b"bytes"}'}}
""",
    )
    functions = Functions()
    execution = await run(flow, functions, {})
    assert functions.bodies["/a"] == [
        {"at": "2026-11-26T07:01:30Z", "took": "1.5s", "keys": {"1": "one", "2": [True]}}
    ]
    assert execution.steps["b"].error == "body.nan: ${0.0 / 0.0}: nan is not a JSON number"
    assert execution.steps["c"].error == 'body.raw: ${b"bytes"}: a bytes value is not JSON'


def readme_examples() -> list[str]:
    """The `write` column of docs/flows.md's table of expression examples, one value each."""
    readme = (Path(__file__).parent.parent.parent / "docs" / "flows.md").read_text()
    table = readme.split("| you want | write |")[1].split("\n\n")[0]
    cells = [row.split(" | ")[1] for row in table.strip().splitlines()[2:]]
    snippets = [s for cell in cells for s in re.findall(r"`([^`]+)`", cell)]
    return [s.split(": ", 1)[1] if re.match(r"^\w+: ", s) else s for s in snippets]


@pytest.mark.parametrize("example", readme_examples())
def test_the_documented_expression_examples_compile_and_run(example: str) -> None:
    value = yaml.safe_load(f"v: {example}")["v"]
    names = Names(
        "example",
        frozenset({"input", "item"}),
        frozenset({"m", "match_candidato"}),
        frozenset({"m", "match_candidato"}),
    )
    template = Template.parse(value, names, {})
    vacancies = {"output": {"vacancies": VACANCIES}, "status": "succeeded"}
    scope = {
        "input": {
            "process_vacancy_orchestrator": True,
            "user_id": "u1",
            "ids": ["a", "b"],
            "n": 4,
            "name": "Ana",
            "since": "2026-11-26T10:00:00Z",
        },
        "steps.m": vacancies,
        "steps.match_candidato": vacancies,
        "item": {**VACANCIES[0], "title": "Senior analyst"},
    }
    assert template.expressions, example
    template.render(scope)  # raises EvaluationError if the example fails on this data


def test_the_readme_shows_every_kind_of_example() -> None:
    assert len(readme_examples()) >= 12
