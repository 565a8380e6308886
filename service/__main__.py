"""The command line: serve (the default), validate, graph, run.

    python -m service                       serve on $PORT (default 8080)
    python -m service validate              check settings and flows; exit 2 with the reason
    python -m service graph FLOW            print the flow as a Mermaid flowchart
    python -m service run FLOW --input JSON run the flow once, here; print the execution

Serving: WEB_CONCURRENCY worker processes share the port, because one CPython
process uses one core and Cloud Run gives an instance 2 vCPUs (scripts/deploy.sh).
The default is the CPUs this process may use with a shared execution store
(EXECUTION_STORE=firestore), 1 with the in-memory store, which each worker would
keep to itself. Each process drains on SIGTERM (service/process.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import uvicorn
from pydantic import ValidationError

from service.app import create_app, load_checked_flows, make_engine
from service.backends.memory import MemoryStore
from service.engine.flow import Flow, flow_files, read_definition
from service.engine.flow_spec import FlowSpec, parse_spec
from service.engine.graph import mermaid
from service.engine.kinds.base import NoChildren
from service.engine.outbound import http_clients
from service.errors import ConfigError
from service.execution import Execution, ExecutionStatus
from service.logs import configure_logging
from service.messages import describe, field_errors
from service.metrics import Metrics, metric_exporter_names
from service.settings import FlowFolders, Settings
from service.telemetry import Tracing
from service.worker.handler import DRAIN_GRACE_S


def serve(settings: Settings, flows: dict[str, Flow]) -> int:
    workers = settings.workers
    # Workers are spawned processes: each imports the app (and reads its settings) itself.
    app: Any = create_app(settings, flows) if workers == 1 else "service.main:app"
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        workers=workers,
        access_log=False,
        log_config=None,
        proxy_headers=True,
        forwarded_allow_ips="*",
        timeout_graceful_shutdown=int(DRAIN_GRACE_S) + 1,
    )
    return 0


def validate(settings: Settings, flows: dict[str, Flow]) -> int:
    transport = "Pub/Sub" if settings.uses_pubsub else "in-process transport"
    print(f"ok: settings valid ({transport}, store {settings.execution_store})")
    for flow in flows.values():
        print(f"ok: flow {flow.name}: {len(flow.steps)} steps ({', '.join(flow.steps)})")
    return 0


def graph(flows: dict[str, Flow], name: str) -> int:
    flow = flows.get(name)
    if flow is None:
        print(f"error: no flow named {name!r} (known: {', '.join(sorted(flows))})", file=sys.stderr)
        return 2
    print(mermaid(flow), end="")
    return 0


def schedules(settings: FlowFolders, tsv: bool) -> int:
    """The flows' schedules, read without compiling the flows (no ${env.NAME} needed):
    a table, or one tab-separated line each (id, cron, time zone, request body) for
    infra/setup.sh --schedules, which makes one Cloud Scheduler job per id."""
    rows = [
        (
            f"{name}-{schedule.name}",
            schedule.cron,
            schedule.time_zone,
            json.dumps({"flow": name, **schedule.input}, separators=(",", ":")),
        )
        for name, spec in _specs(settings)
        for schedule in spec.schedules
    ]
    return _listed(rows, tsv, "schedules", "{0}: '{1}' ({2}) POST /orchestrate {3}")


def triggers(settings: FlowFolders, tsv: bool) -> int:
    """The flows' event triggers, read without compiling the flows: a table, or one
    tab-separated line each (id, topic, push path) for infra/setup.sh --triggers, which
    keeps one push subscription per id."""
    rows = [
        (f"{name}-{trigger.name}", trigger.topic, f"/pubsub/events/{name}/{trigger.name}")
        for name, spec in _specs(settings)
        for trigger in spec.triggers
    ]
    return _listed(rows, tsv, "triggers", "{0}: topic {1} → POST {2}")


def _specs(settings: FlowFolders) -> Iterator[tuple[str, FlowSpec]]:
    """Each flow's name and spec, checked but not compiled."""
    for folder in settings.flows_dir:
        for path in flow_files(folder):
            name, raw = read_definition(path)
            yield name, parse_spec(name, raw, str(path))


def _listed(rows: Sequence[tuple[str, ...]], tsv: bool, kind: str, line: str) -> int:
    """`rows` tab-separated for scripts, else each as `line` says (or that there are none)."""
    if tsv:
        lines = ["\t".join(row) for row in rows]
    else:
        lines = [line.format(*row) for row in rows] or [f"no flow declares {kind}"]
    print("".join(f"{each}\n" for each in lines), end="")
    return 0


def run(settings: Settings, flows: dict[str, Flow], name: str, raw_input: str) -> int:
    flow = flows.get(name)
    if flow is None:
        print(f"error: no flow named {name!r} (known: {', '.join(sorted(flows))})", file=sys.stderr)
        return 2
    try:
        flow_input = flow.validate_input(json.loads(raw_input))
    except json.JSONDecodeError as exc:
        print(f"error: --input is not JSON: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"error: --input: {describe(field_errors(exc))}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, stream=sys.stderr)  # stdout is the document
    execution = Execution(
        execution_id=f"local-{uuid.uuid4()}",
        flow=flow.name,
        status=ExecutionStatus.RUNNING,
        input=flow_input,
    )

    async def execute() -> Execution:
        async with http_clients() as (_, sender):
            store, children = MemoryStore(), NoChildren()
            engine = make_engine(
                settings, store, sender, children, tracing=Tracing(), metrics=Metrics()
            )
            try:
                ran = await engine.runner.run(flow, execution)
                return ran.shadowed(await engine.runner.shadows.settled(ran.execution_id))
            finally:
                await engine.quotas.close()

    finished = asyncio.run(execute())
    print(finished.model_dump_json(indent=2))
    return 0 if finished.status == ExecutionStatus.SUCCEEDED else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description="ML Orchestrator")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve on $PORT (the default)")
    commands.add_parser("validate", help="check the settings and flows")
    graph_parser = commands.add_parser("graph", help="print a flow as a Mermaid flowchart")
    graph_parser.add_argument("flow")
    run_parser = commands.add_parser("run", help="run a flow once, here, and print the result")
    run_parser.add_argument("flow")
    run_parser.add_argument("--input", required=True, help="the flow's input as JSON")
    schedules_parser = commands.add_parser("schedules", help="list the flows' schedules")
    schedules_parser.add_argument("--tsv", action="store_true", help="for scripts")
    triggers_parser = commands.add_parser("triggers", help="list the flows' event triggers")
    triggers_parser.add_argument("--tsv", action="store_true", help="for scripts")
    args = parser.parse_args(argv)
    if args.command in ("schedules", "triggers"):
        listing = schedules if args.command == "schedules" else triggers
        try:
            return listing(FlowFolders.load(), args.tsv)
        except ConfigError as exc:
            print(f"ml-orchestrator: {exc}", file=sys.stderr)
            return 2
    try:
        settings = Settings.load()
        flows = load_checked_flows(settings)
        metric_exporter_names()
    except ConfigError as exc:
        print(f"ml-orchestrator: cannot start: {exc}", file=sys.stderr)
        return 2
    if args.command == "validate":
        return validate(settings, flows)
    if args.command == "graph":
        return graph(flows, args.flow)
    if args.command == "run":
        return run(settings, flows, args.flow, args.input)
    return serve(settings, flows)


if __name__ == "__main__":
    sys.exit(main())
