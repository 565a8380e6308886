"""`${...}` templates: finding expressions in text, paths, CEL programs and what they may read."""

import re

import pytest

from service.engine.expressions import (
    ExpressionError,
    Names,
    Path,
    Program,
    Template,
    compile_value,
    render_value,
)

NAMES = Names("body", frozenset({"input", "item"}), frozenset({"match"}), frozenset({"match", "x"}))
SCOPE = {
    "input": {"user_id": "u1", "flag": True},
    "steps.match": {"output": {"vacancies": [{"vacancy_id": "v1"}, {"vacancy_id": "v2"}]}},
    "item": {"vacancy_id": "v9"},
}


def parse(text: str, env: dict[str, str] | None = None) -> Template:
    return Template.parse(text, NAMES, env or {})


def test_whole_expression_keeps_the_type_of_its_value() -> None:
    """`${steps.x.output.list}` renders as the list itself, not its text."""
    template = parse("${steps.match.output.vacancies}")
    assert template.render(SCOPE) == SCOPE["steps.match"]["output"]["vacancies"]  # type: ignore[index]


def test_text_around_expressions_makes_a_string() -> None:
    assert parse("user-${input.user_id}-${input.flag}").render(SCOPE) == "user-u1-true"
    assert parse("n=${[1, 2].map(x, x * 2)}").render(SCOPE) == "n=[2,4]"


def test_plain_paths_are_read_directly_and_null_where_missing() -> None:
    """`[n]` indexes lists; a missing key or index is null, not an error, as before CEL."""
    read = parse("${steps.match.output.vacancies[1].vacancy_id}")
    assert isinstance(read.parts[0], Path) and read.render(SCOPE) == "v2"
    assert parse("${steps.match.output.vacancies[5]}").render(SCOPE) is None
    assert parse("${input.nothing.deeper}").render(SCOPE) is None


def test_anything_else_is_a_cel_program_reading_only_what_it_names() -> None:
    template = parse("${size(steps.match.output.vacancies) + 1}")
    program = template.parts[0]
    assert isinstance(program, Program)
    assert program.variables == ("steps.match",) and program.result_type == "INT"
    assert template.render(SCOPE) == 3


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('${{"a": "}"}.a}', "}"),  # a brace inside a CEL string does not end the expression
        ("${{'k': {'n': 1}}.k.n}", 1),
        ('${"${not an expression}"}', "${not an expression}"),
        (r'${"quote \" inside"}', 'quote " inside'),
        ("${'''triple ' quoted'''}", "triple ' quoted"),
    ],
)
def test_expressions_end_at_their_own_closing_brace(text: str, value: object) -> None:
    assert parse(text).render(SCOPE) == value


def test_env_is_substituted_when_parsed() -> None:
    template = parse("${env.BASE}/fn", {"BASE": "https://x.run.app"})
    assert template.expressions == ()
    assert template.render({}) == "https://x.run.app/fn"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            "${user.id}",
            "body: ${user.id}: unknown name 'user': read one of input, item, steps.NAME",
        ),
        ("${input.a b}", "body: ${input.a b}: 1:9: Syntax error"),
        ("${input.a", "body: '${input.a': unclosed '${'"),
        ("${env.MISSING_VAR}", "environment variable MISSING_VAR is not set"),
        ("${env}", "write ${env.NAME}"),
        ("${steps.x.output}", "reads step 'x', which is not in 'after'"),
        ("${steps.nope.output.a > 1}", "unknown step 'nope'"),
        ("${steps}", "name a step after 'steps'"),
        ("${response}", "response (the step's answer) is only known in output"),
        ("${input.name.shout()}", "body: ${input.name.shout()}: unknown function 'shout'"),
        ("${" + "1 + " * 1100 + "1}", "body: expression longer than 4096"),
    ],
)
def test_bad_expressions_are_refused_with_field_expression_and_reason(
    text: str, reason: str
) -> None:
    with pytest.raises(ExpressionError, match=re.escape(reason)):
        parse(text)


def test_nested_body_values_render_recursively_and_name_their_field() -> None:
    body = compile_value({"ids": ["${input.user_id}", 3], "item": "${item.vacancy_id}"}, NAMES, {})
    assert render_value(body, SCOPE) == {"ids": ["u1", 3], "item": "v9"}
    with pytest.raises(ExpressionError, match=re.escape("body.ids[1]: ${nope}: unknown name")):
        compile_value({"ids": ["x", "${nope}"]}, NAMES, {})
