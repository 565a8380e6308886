"""`python -m bench.expressions`: what CEL expressions cost the default flow, per step.

Part 1, in this process: each step's expressions of flows/ml-orchestration.yaml
evaluated on match_candidato answers of 3, 100 and 1,000 vacancies, against the
same reads in the flow as it was before CEL (bench/flows/before-cel.yaml: plain
paths). Per execution: when and for_each once per step, body and output once per
item, result once.

Part 2: CPU per execution of the whole engine (push handler in this process,
stand-in functions in their own), the flow before CEL against the default flow
now, with min_score unset and set (half the vacancies kept).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.handler import FULL, cpu_per_execution
from bench.processes import ROOT, Process
from service.dev.standins import FUNCTIONS
from service.engine.expressions import render_value
from service.engine.flow import Flow, load_flow
from service.logs import configure_logging

ENV = {name: "http://fn" + path for name, path in FUNCTIONS.items()}
BEFORE = ROOT / "bench" / "flows" / "before-cel.yaml"
NOW = ROOT / "flows" / "ml-orchestration.yaml"


def microseconds(work: Callable[[], Any]) -> float:
    number = max(1, int(0.05 / max(timeit.timeit(work, number=1), 1e-7)))
    return min(timeit.repeat(work, number=number, repeat=5)) / number * 1e6


def per_step(flow: Flow, count: int, min_score: float | None) -> dict[str, float]:
    """Microseconds of expression work per step of one execution with `count` vacancies."""
    vacancies = [{"vacancy_id": f"vac-{n}", "score": 1 - n / (count + 1)} for n in range(count)]
    flow_input = flow.validate_input({**FULL, "min_score": min_score})
    scope: dict[str, Any] = {"input": flow_input}
    for name in flow.steps:
        scope[f"steps.{name}"] = {"status": "succeeded", "output": {"ok": True}}
    scope["steps.match_candidato"]["output"] = {"vacancies": vacancies}
    analyse = flow.steps["match_analysis_user_vacancy"]
    assert analyse.for_each is not None
    items = analyse.for_each.render(scope)
    item_scope = {**scope, "item": items[0] if items else vacancies[0]}
    answer = {"vacancy_id": "vac-1", "fit": "high", "gaps": ["SQL"]}
    costs = {}
    for step in flow.steps.values():
        when = step.when
        costs[f"{step.name}: when"] = microseconds(lambda w=when: w.render(scope)) if when else 0
        body = microseconds(lambda s=step: render_value(s.body, item_scope))
        costs[f"{step.name}: body"] = body * (len(items) if step.for_each else 1)
    costs["match_analysis_user_vacancy: for_each"] = microseconds(
        lambda: analyse.for_each.render(scope)  # type: ignore[union-attr]
    )
    output = analyse.output
    shaped = (
        microseconds(lambda: render_value(output, {**item_scope, "response": answer}))
        if output is not None
        else 0
    )
    costs["match_analysis_user_vacancy: output"] = shaped * len(items)
    scope["steps.match_analysis_user_vacancy"]["output"] = [
        {"vacancy_id": item["vacancy_id"], "score": item["score"], "analysis": answer}
        for item in items
    ]
    result = flow.result
    costs["result"] = microseconds(lambda: render_value(result, scope)) if result else 0
    return costs


def part_one(sizes: list[int]) -> None:
    before, now = load_flow(BEFORE, ENV), load_flow(NOW, ENV)
    for count in sizes:
        for min_score in (None, 0.5):
            old = per_step(before, count, None)
            new = per_step(now, count, min_score)
            print(f"\n{count} vacancies, min_score {min_score}: microseconds per execution")
            print(f"  {'':45} {'before CEL':>11} {'now':>11}")
            for key in new:
                print(f"  {key:45} {old.get(key, 0):11.1f} {new[key]:11.1f}")
            total_old, total_new = sum(old.values()), sum(new.values())
            print(
                f"  {'total':45} {total_old:11.1f} {total_new:11.1f}"
                f"  ({total_new - total_old:+.1f} us, {total_new / total_old:.2f}x)"
            )


def part_two(runs: int, at_once: int, delay_ms: float, vacancies: int) -> None:
    log = Path(tempfile.mkdtemp()) / "functions.log"
    functions = Process.start(
        "functions",
        ["bench/functions.py"],
        {"DELAY_MS": str(delay_ms), "VACANCIES": str(vacancies)},
        "/health",
        log,
    )
    flows = Path(tempfile.mkdtemp())
    (flows / "before-cel.yaml").symlink_to(BEFORE)
    (flows / "ml-orchestration.yaml").symlink_to(NOW)
    cases = [
        ("before CEL (plain paths)", "before-cel", FULL),
        ("now, min_score unset", "ml-orchestration", FULL),
        ("now, min_score 0.5", "ml-orchestration", {**FULL, "min_score": 0.5}),
    ]
    try:
        cpu = {
            label: asyncio.run(
                cpu_per_execution(
                    functions.url, runs, at_once, flows_dir=flows, flow=flow, flow_input=data
                )
            )
            for label, flow, data in cases
        }
    finally:
        functions.stop()
    print(f"\nCPU per execution, {vacancies} vacancies ({runs} runs, {at_once} at once):")
    baseline = cpu[cases[0][0]]
    for label, value in cpu.items():
        print(f"  {label:28} {value:6.2f} ms  ({value / baseline:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--delay-ms", type=float, default=20)
    parser.add_argument("--vacancies", type=int, default=10)
    parser.add_argument("--sizes", default="3,100,1000", help="vacancies in part 1")
    args = parser.parse_args()
    configure_logging("json", level=logging.WARNING)
    part_one([int(size) for size in args.sizes.split(",")])
    part_two(args.runs, args.concurrency, args.delay_ms, args.vacancies)


if __name__ == "__main__":
    main()
