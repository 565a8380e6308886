"""`python -m bench.shadows`: what a shadow on `match_candidato` at 100 % costs the
default flow, against the same flow without it, measured in the same run.

Stand-in functions answer after --delay-ms in their own process (bench/functions.py);
the candidate answers after --candidate-ms in another (slower than the primary, as a
new model often is), the same answer. Two figures, the two flows alternated over
--rounds rounds, medians shown:

- CPU per execution of this process (the push handler with its store in memory),
  --runs executions 20 at a time: the shadow's call, its comparison and its record
  (goal: at most +30 %);
- time from the 202 to the webhook, executions one at a time through the whole app on
  the embedded transport (goal: no change beyond noise: the result does not wait).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from fastapi import FastAPI, Request, Response

from bench.handler import FULL, cpu_per_execution
from bench.latency import served
from bench.processes import ROOT, Process
from service.app import create_app
from service.dev.emulator import free_port
from service.dev.standins import FUNCTIONS
from service.engine.flow import load_flows
from service.logs import configure_logging
from service.settings import Settings

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def flows_dir(candidate: str | None, into: Path) -> Path:
    """The project's default flow, with a shadow on match_candidato when `candidate`."""
    definition = yaml.safe_load((ROOT / "flows" / "ml-orchestration.yaml").read_text())
    if candidate is not None:
        definition["steps"]["match_candidato"]["shadow"] = {"call": f"{candidate}/match-candidato"}
    folder = into / ("shadowed" if candidate else "plain")
    folder.mkdir()
    (folder / "ml-orchestration.yaml").write_text(yaml.safe_dump(definition, sort_keys=False))
    return folder


async def time_to_webhook(functions_url: str, folder: Path, runs: int) -> list[float]:
    """Milliseconds from each 202 to its webhook, one execution at a time."""
    arrivals: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
    receiver = FastAPI()

    @receiver.post("/hook")
    async def hook(request: Request) -> Response:
        arrivals.put_nowait((request.headers["webhook-id"], time.perf_counter()))
        return Response(status_code=204)

    hook_port, port = free_port(), free_port()
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        ml_auth="none",
        log_format="json",
        default_webhook_url=f"http://127.0.0.1:{hook_port}/hook",
        webhook_allow_private_networks=True,
        webhook_secret=WEBHOOK_SECRET,
    )
    env = {name: functions_url + path for name, path in FUNCTIONS.items()}
    app = create_app(settings, load_flows(folder, env))
    took = []
    async with (
        served(receiver, hook_port),
        served(app, port) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        for _ in range(runs + 3):  # the first ones warm connections up
            started = time.perf_counter()
            accepted = (await client.post("/orchestrate", json=FULL)).json()
            execution_id, arrived = await arrivals.get()
            assert execution_id == accepted["execution_id"]
            took.append((arrived - started) * 1000)
    return took[3:]


async def measure(args: argparse.Namespace, primary: Process, candidate: Process) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folders = {
            "no shadow": flows_dir(None, Path(scratch)),
            "shadow at 100 %": flows_dir(candidate.url, Path(scratch)),
        }
        cpu: dict[str, list[float]] = {name: [] for name in folders}
        webhook: dict[str, list[float]] = {name: [] for name in folders}
        for _ in range(args.rounds):
            for name, folder in folders.items():
                cpu[name].append(
                    await cpu_per_execution(primary.url, args.runs, 20, flows_dir=folder)
                )
                webhook[name] += await time_to_webhook(primary.url, folder, args.latency_runs)
    base_cpu = statistics.median(cpu["no shadow"])
    base_p50 = statistics.median(webhook["no shadow"])
    print(
        f"default flow, functions at {args.delay_ms:g} ms, candidate at {args.candidate_ms:g} ms; "
        f"{args.rounds} rounds of {args.runs} executions (CPU) and {args.latency_runs} (webhook)"
    )
    head = ("CPU ms/exec", "vs none", "202→webhook p50", "p90", "vs none")
    print(f"{'':<16} {head[0]:>12} {head[1]:>8} {head[2]:>16} {head[3]:>8} {head[4]:>8}")
    for name in folders:
        used = statistics.median(cpu[name])
        p50 = statistics.median(webhook[name])
        p90 = statistics.quantiles(webhook[name], n=10)[8]
        print(
            f"{name:<16} {used:>12.2f} {used / base_cpu - 1:>+8.1%} "
            f"{p50:>13.1f} ms {p90:>5.1f} ms {p50 / base_p50 - 1:>+8.1%}"
        )
    print("goals: CPU at most +30 %; time to webhook unchanged beyond noise")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=50)
    parser.add_argument("--candidate-ms", type=float, default=150)
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--latency-runs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    configure_logging("console", level=logging.WARNING)
    logs = Path(tempfile.mkdtemp(prefix="bench-shadows-"))
    script = ["bench/functions.py"]
    primary = Process.start(
        "functions", script, {"DELAY_MS": str(args.delay_ms)}, "/health", logs / "primary.log"
    )
    candidate = Process.start(
        "candidate", script, {"DELAY_MS": str(args.candidate_ms)}, "/health", logs / "candidate.log"
    )
    try:
        asyncio.run(measure(args, primary, candidate))
    finally:
        primary.stop()
        candidate.stop()


if __name__ == "__main__":
    main()
