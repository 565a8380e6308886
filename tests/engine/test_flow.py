import re
from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError

from service.engine.flow import check_children, load_flow, load_flows
from service.engine.graph import described, mermaid
from service.engine.kinds import KINDS
from service.engine.step import StepKind
from service.errors import FlowError

PROJECT_FLOWS = Path(__file__).resolve().parent.parent.parent / "flows"
ENV = {
    "DEFAULT_CREATE_USER_EMBEDDINGS_URL": "https://fn.example/embeddings",
    "DEFAULT_PROFESSION_ORCHESTRATOR_URL": "https://fn.example/professions",
    "DEFAULT_MATCH_CANDIDATO_URL": "https://fn.example/match",
    "DEFAULT_MATCH_ANALYSIS_USER_VACANCY_URL": "https://fn.example/analysis",
}


def write(tmp_path: Path, text: str, name: str = "test-flow") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_default_flow_matches_the_design() -> None:
    """Embeddings first; professions and matching after it; analysis per vacancy after matching."""
    flow = load_flows(PROJECT_FLOWS, ENV)["ml-orchestration"]
    steps = flow.steps
    assert list(steps) == [
        "create_user_embeddings",
        "profession_orchestrator",
        "match_candidato",
        "match_analysis_user_vacancy",
    ]
    assert steps["profession_orchestrator"].after == ("create_user_embeddings",)
    assert steps["match_candidato"].after == ("create_user_embeddings",)
    assert steps["match_analysis_user_vacancy"].after == ("match_candidato",)
    assert steps["match_analysis_user_vacancy"].max_concurrency == 10
    assert steps["match_candidato"].url == ENV["DEFAULT_MATCH_CANDIDATO_URL"]
    assert steps["match_candidato"].audience == ENV["DEFAULT_MATCH_CANDIDATO_URL"]


def test_default_flow_input_takes_the_seed_payload() -> None:
    flow = load_flows(PROJECT_FLOWS, ENV)["ml-orchestration"]
    seed = {
        "user_id": "test_user_123",
        "session_id": "test_session_456",
        "create_user_embedding": False,
        "process_profession_orchestrator": True,
        "process_vacancy_orchestrator": True,
    }
    # Declared fields the payload leaves out are there, with their defaults (null).
    assert flow.validate_input(seed) == {**seed, "min_score": None}
    assert flow.validate_input({**seed, "min_score": 0.7})["min_score"] == 0.7
    with pytest.raises(ValidationError) as caught:
        flow.validate_input({"session_id": "s"})
    assert caught.value.errors()[0]["loc"] == ("user_id",)


def test_extra_input_fields_are_kept() -> None:
    flow = load_flows(PROJECT_FLOWS, ENV)["ml-orchestration"]
    assert (
        flow.validate_input({"user_id": "u", "session_id": "s", "locale": "pt"})["locale"] == "pt"
    )


@pytest.mark.parametrize(
    ("yaml_text", "step", "reason"),
    [
        ("steps:\n  a: {call: 'https://x', after: [b]}\n", "a", "unknown step 'b'"),
        (
            "steps:\n  a: {call: 'https://x', after: [b]}\n  b: {call: 'https://x', after: [a]}\n",
            None,
            "dependency cycle",
        ),
        ("steps:\n  a: {call: '${env.NOT_SET_ANYWHERE}'}\n", "a", "NOT_SET_ANYWHERE is not set"),
        (
            "steps:\n  a: {call: 'https://x', body: {u: '${usr.id}'}}\n",
            "a",
            "body.u: ${usr.id}: unknown name 'usr': read one of input",
        ),
        (
            "steps:\n  a: {call: 'https://x'}\n"
            "  b: {call: 'https://x', body: {o: '${steps.a.output}'}}\n",
            "b",
            "not in 'after'",
        ),
        (
            "steps:\n  a: {call: 'https://x'}\n"
            "  b: {call: 'https://x', when: '${size(steps.a.output) > 0}'}\n",
            "b",
            "when: ${size(steps.a.output) > 0}: reads step 'a', which is not in 'after'",
        ),
        (
            "steps:\n  a: {call: 'https://x', body: {v: '${item.id}'}}\n",
            "a",
            "body.v: ${item.id}: item is only known in a for_each step's body and output",
        ),
        (
            "steps:\n  a: {call: 'https://x', body: {v: '${response.id}'}}\n",
            "a",
            "body.v: ${response.id}: response (the step's answer) is only known in output",
        ),
        (
            "steps:\n  a: {call: 'https://x', when: '${input.n >}'}\n",
            "a",
            "when: ${input.n >}: 1:10: Syntax error",
        ),
        (
            "steps:\n  a: {call: 'https://x', when: '${size(input.list)}'}\n",
            "a",
            "when: '${size(input.list)}' gives int, not bool",
        ),
        (
            "steps:\n  a: {call: 'https://x', for_each: '${input.user_id + \"s\"}'}\n",
            "a",
            "for_each: '${input.user_id + \"s\"}' gives string, not list",
        ),
        (
            "steps:\n  a: {call: 'https://x', for_each: 'ids: ${input.ids}'}\n",
            "a",
            "for_each: 'ids: ${input.ids}' gives string, not list",
        ),
        (
            "steps:\n  a: {call: 'https://x', body: {v: '${input.flag ? 1 : \"one\"}'}}\n",
            "a",
            "found no matching overload for '_?_:_' applied to '(dyn, int, string)'",
        ),
        (
            "steps:\n  a: {call: 'https://x', body: {v: '${env.HOME + \"/x\"}'}}\n",
            "a",
            "env is read when the flow loads: write ${env.NAME} on its own",
        ),
        (
            "steps:\n  a: {call: 'https://x', output: '${response.items.filter(i, i.ok'}\n",
            "a",
            "unclosed '${'",
        ),
        (
            "steps:\n  a: {call: 'https://x'}\nresult: {first: '${steps.b.output}'}\n",
            None,
            "result.first: ${steps.b.output}: unknown step 'b'",
        ),
        (
            "steps:\n  a: {call: 'https://x'}\nresult: '${item}'\n",
            None,
            "result: ${item}: item is only known in a for_each step's body and output",
        ),
        ("steps:\n  a: {call: 'ftp://x'}\n", "a", "not an http(s) URL"),
        ("steps:\n  a: {call: 'https://${input.host}/x'}\n", "a", "only ${env.NAME}"),
        ("steps:\n  a: {call: 'https://x', retries: 3}\n", "a", "Extra inputs"),
        ("steps:\n  a: {call: 'https://x', timeout_s: 0}\n", "a", "greater than 0"),
        ("steps: {}\n", None, "at least 1"),
        ("steps: [\n", None, "not valid YAML"),
    ],
)
def test_invalid_flows_fail_to_load_naming_file_and_step(
    tmp_path: Path, yaml_text: str, step: str | None, reason: str
) -> None:
    path = write(tmp_path, yaml_text)
    with pytest.raises(FlowError) as caught:
        load_flow(path, {})
    assert caught.value.file == str(path)
    if step is not None:
        assert caught.value.step == step
        assert f"step {step!r}" in str(caught.value)
    assert reason in str(caught.value)


def test_a_cycle_names_its_steps(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "steps:\n  a: {call: 'https://x', after: [c]}\n"
        "  b: {call: 'https://x', after: [a]}\n  c: {call: 'https://x', after: [b]}\n",
    )
    with pytest.raises(FlowError, match=r"cycle (a|b|c) -> (a|b|c) -> (a|b|c) -> (a|b|c)"):
        load_flow(path, {})


def test_reading_a_transitive_dependency_is_allowed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "steps:\n  a: {call: 'https://x'}\n  b: {call: 'https://x', after: [a]}\n"
        "  c: {call: 'https://x', after: [b], body: {o: '${steps.a.output}'}}\n",
    )
    assert list(load_flow(path, {}).steps) == ["a", "b", "c"]


def test_file_names_must_be_flow_names(tmp_path: Path) -> None:
    path = write(tmp_path, "steps:\n  a: {call: 'https://x'}\n", name="Bad Name")
    with pytest.raises(FlowError, match="file name"):
        load_flow(path, {})


def test_an_empty_flows_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FlowError, match="no flow files"):
        load_flows(tmp_path, {})


SCHEDULED = """
input:
  user_id: {type: string, required: true}
steps:
  one:
    call: https://fn.example/one
    body: {user_id: "${input.user_id}"}
schedules:
  - SCHEDULE
"""


@pytest.mark.parametrize(
    ("schedule", "reason"),
    [
        ("{name: a, cron: '0 6 * *', input: {user_id: x}}", "is not unix-cron (five fields"),
        ("{name: a, cron: '0 6 * * *', time_zone: Mars/Base, input: {user_id: x}}", "tz database"),
        ("{name: a, cron: '0 6 * * *', input: {}}", "schedules.0.input.user_id: Field required"),
        ("{name: A_b, cron: '0 6 * * *', input: {user_id: x}}", "schedules.0.name"),
        ("{name: a, cron: '@daily', input: {user_id: x}}", "is not unix-cron"),
    ],
)
def test_a_schedule_is_checked_when_its_flow_loads(
    tmp_path: Path, schedule: str, reason: str
) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(SCHEDULED.replace("SCHEDULE", schedule))
    with pytest.raises(FlowError, match=re.escape(reason)):
        load_flow(path, {})


def test_a_flow_s_schedules_are_kept_with_it(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    twice = "{name: a, cron: '0  6 * * 1-5', time_zone: Europe/Madrid, input: {user_id: x}}"
    path.write_text(SCHEDULED.replace("SCHEDULE", twice))
    [schedule] = load_flow(path, {}).schedules
    assert (schedule.name, schedule.cron, schedule.time_zone) == (
        "a",
        "0 6 * * 1-5",
        "Europe/Madrid",
    )
    path.write_text(SCHEDULED.replace("SCHEDULE", twice + "\n  - " + twice))
    with pytest.raises(FlowError, match="two schedules named 'a'"):
        load_flow(path, {})


TRIGGERED = SCHEDULED.replace("schedules:\n  - SCHEDULE", "triggers:\n  - TRIGGER")


@pytest.mark.parametrize(
    ("trigger", "reason"),
    [
        ("{name: Landed, topic: t-1, input: {user_id: x}}", "triggers.0.name"),
        ("{name: a, topic: 'no spaces', input: {user_id: x}}", "triggers.0.topic"),
        ("{name: a, topic: projects/p/topics/t-1, input: {user_id: x}}", "triggers.0.topic"),
        ("{name: a, topic: t-1, input: {user_id: x}, where: y}", "triggers.0.where"),
        ("{name: a, topic: t-1, input: {}}", "triggers.0.input.user_id: Field required"),
        ("{name: a, topic: t-1, when: '${1 + 2}', input: {user_id: x}}", "triggers.0.when"),
        ("{name: a, topic: t-1, when: '${event.nope(}', input: {user_id: x}}", "triggers.0.when"),
        ("{name: a, topic: t-1, input: {user_id: '${input.user_id}'}}", "triggers.0.input"),
        ("{name: a, topic: t-1, input: {user_id: '${steps.one.output}'}}", "triggers.0.input"),
    ],
)
def test_a_trigger_is_checked_when_its_flow_loads(
    tmp_path: Path, trigger: str, reason: str
) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(TRIGGERED.replace("TRIGGER", trigger))
    with pytest.raises(FlowError, match=re.escape(reason)):
        load_flow(path, {})


def test_a_flow_s_triggers_are_kept_with_it_and_described(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    trigger = (
        "{name: landed, topic: projects/data-team-1/topics/exports, "
        "when: '${event.attributes.eventType == \"OBJECT_FINALIZE\"}', "
        "input: {user_id: '${event.data.user}'}}"
    )
    path.write_text(TRIGGERED.replace("TRIGGER", trigger))
    flow = load_flow(path, {})
    assert list(flow.triggers) == ["landed"]
    assert described(flow)["triggers"] == [
        {
            "name": "landed",
            "topic": "projects/data-team-1/topics/exports",
            "when": '${event.attributes.eventType == "OBJECT_FINALIZE"}',
        }
    ]
    path.write_text(TRIGGERED.replace("TRIGGER", trigger + "\n  - " + trigger))
    with pytest.raises(FlowError, match="two triggers named 'landed'"):
        load_flow(path, {})


def test_each_step_s_kind_is_decided_when_its_flow_loads(tmp_path: Path) -> None:
    """A step has one kind, a field of its compiled form, and only `call` does not wait."""
    env = {"BATCH_API_URL": "https://batch.example", "REVIEW_URL": "https://review.example"}
    env["PUBLISH_URL"] = "https://publish.example"
    example = load_flow(PROJECT_FLOWS / "examples" / "batch-review.yaml", env)
    kinds = {name: step.kind for name, step in example.steps.items()}
    assert kinds == {"start_batch": "poll", "review": "callback", "publish": "call"}
    napping = load_flow(
        write(tmp_path, "steps:\n  nap: {sleep: 5s}\n  later: {sleep_until: '${input.at}'}\n"), {}
    )
    assert {name: step.kind for name, step in napping.steps.items()} == {
        "nap": "sleep",
        "later": "sleep",
    }
    assert [KINDS[step.kind].waits for step in example.steps.values()] == [True, True, False]


def test_each_kind_of_step_is_one_module_registered_by_its_name() -> None:
    """The kinds a compiled step may have are the registry's, each its own module."""
    assert set(KINDS) == set(get_args(StepKind))
    for name, kind in KINDS.items():
        assert kind.name == name
        assert type(kind).__module__ == f"service.engine.kinds.{name}"


@pytest.mark.parametrize(
    ("step", "reason"),
    [
        ("{call: 'https://x.example', tolerate: {failures: 1}}", "tolerate: only a for_each step"),
        ("{call: 'https://x.example', for_each: '${[1]}', tolerate: {failures: -1}}", "0 or more"),
        ("{call: 'https://x.example', for_each: '${[1]}', tolerate: {failures: 150%}}", "a share"),
        ("{call: 'https://x.example', for_each: '${[1]}', tolerate: {failures: some}}", "a share"),
        ("{call: 'https://x.example', for_each: '${[1]}', tolerate: {failures: true}}", "failures"),
        (
            "{call: 'https://x.example', for_each: '${[1]}', tolerate: {share: 1}}",
            "failures: Field required",
        ),
    ],
)
def test_tolerate_is_a_count_or_share_of_a_for_each_s_items(
    tmp_path: Path, step: str, reason: str
) -> None:
    with pytest.raises(FlowError, match=re.escape(reason)):
        load_flow(write(tmp_path, f"steps:\n  s: {step}\n"), {})
    good = "{call: 'https://x.example', for_each: '${[1]}', tolerate: {failures: 12.5%}}"
    flow = load_flow(write(tmp_path, f"steps:\n  s: {good}\n"), {})
    [tolerant] = flow.steps.values()
    assert tolerant.tolerate is not None and tolerant.tolerate.failures == "12.5%"
    assert "tolerates 12.5% failed" in mermaid(flow)
    assert described(flow)["steps"][0]["tolerate"] == "12.5%"


@pytest.mark.parametrize(
    ("step", "reason"),
    [
        ("{flow: other, call: 'https://x.example'}", "flow: a flow step makes no call"),
        ("{flow: other, body: {a: 1}}", "body: a flow step makes no call"),
        ("{call: 'https://x.example', input: {a: 1}}", "input: only a flow step takes it"),
        ("{call: 'https://x.example', timeout: 1h}", "timeout: only a flow step takes it"),
        ("{flow: other, callback: {}}", "a step waits one way"),
        ("{flow: other, cache: {key: x, ttl: 1h}}", "cache: a step that waits is not cached"),
        ("{flow: other, input: {a: '${item}'}}", "item"),
    ],
)
def test_a_flow_step_is_checked_when_its_flow_loads(tmp_path: Path, step: str, reason: str) -> None:
    with pytest.raises(FlowError, match=re.escape(reason)):
        load_flow(write(tmp_path, f"steps:\n  s: {step}\n"), {})


def test_a_flow_step_names_a_flow_that_is_loaded(tmp_path: Path) -> None:
    write(tmp_path, "steps:\n  s: {flow: child, input: {a: 1}, timeout: 2h}\n", "parent")
    flows = load_flows(tmp_path, {})
    with pytest.raises(FlowError, match=re.escape("flow: no flow named 'child'")):
        check_children(flows)
    write(tmp_path, "steps:\n  s: {call: 'https://x.example'}\n", "child")
    flows = load_flows(tmp_path, {})
    check_children(flows)
    step = flows["parent"].steps["s"]
    assert (step.kind, step.child_flow, step.child_timeout_s) == ("flow", "child", 7200.0)
    assert "runs flow child, at most 2h" in mermaid(flows["parent"])
