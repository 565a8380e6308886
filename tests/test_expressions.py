import re

import pytest

from service.expressions import ExpressionError, Path, Template, compile_value, render_value

SCOPE = {
    "input": {"user_id": "u1", "flag": True},
    "steps": {"match": {"output": {"vacancies": [{"vacancy_id": "v1"}, {"vacancy_id": "v2"}]}}},
    "item": {"vacancy_id": "v9"},
}


def test_whole_expression_keeps_the_type_of_its_value() -> None:
    """`${steps.x.output.list}` renders as the list itself, not its text."""
    template = Template.parse("${steps.match.output.vacancies}", {})
    assert template.render(SCOPE) == SCOPE["steps"]["match"]["output"]["vacancies"]


def test_text_around_expressions_makes_a_string() -> None:
    assert Template.parse("user-${input.user_id}-${input.flag}", {}).render(SCOPE) == "user-u1-true"


def test_index_and_missing_keys() -> None:
    """`[n]` indexes lists; a missing key or index is null, not an error."""
    assert Path.parse("steps.match.output.vacancies[1].vacancy_id").resolve(SCOPE) == "v2"
    assert Path.parse("steps.match.output.vacancies[5]").resolve(SCOPE) is None
    assert Path.parse("input.nothing.deeper").resolve(SCOPE) is None


def test_env_is_substituted_when_parsed() -> None:
    template = Template.parse("${env.BASE}/fn", {"BASE": "https://x.run.app"})
    assert template.paths == ()
    assert template.render({}) == "https://x.run.app/fn"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("${user.id}", "must start with one of"),
        ("${input.a b}", "cannot read from"),
        ("${input.a", "unclosed"),
        ("${env.MISSING_VAR}", "MISSING_VAR is not set"),
        ("${env}", "write ${env.NAME}"),
    ],
)
def test_bad_expressions_are_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(ExpressionError, match=re.escape(reason)):
        Template.parse(text, {})


def test_nested_body_values_render_recursively() -> None:
    body = compile_value({"ids": ["${input.user_id}", 3], "item": "${item.vacancy_id}"}, {})
    assert render_value(body, SCOPE) == {"ids": ["u1", 3], "item": "v9"}
