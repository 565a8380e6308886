"""What every case of `python -m bench` shares: sizes, the report, the processes it starts."""

from __future__ import annotations

import argparse
import json
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.processes import ROOT, Process
from service.dev.emulator import Emulator
from service.dev.standins import FUNCTIONS
from service.messages import SEED_PAYLOAD

SEED = SEED_PAYLOAD
FULL = {**SEED, "create_user_embedding": True}
PROJECT = "bench"
TOPIC = "ml-orchestration-requests"


@dataclass
class Sizes:
    seconds: float
    rates: list[int]
    in_flight: list[int]
    fan_out: list[int]
    memory: int
    end_to_end: int
    cpu_runs: int
    cold_starts: int

    @classmethod
    def pick(cls, tiny: bool) -> Sizes:
        if tiny:
            return cls(1.0, [20], [1, 10], [10, 50], 50, 6, 20, 1)
        return cls(5.0, [250, 500, 1000], [1, 100, 1000], [10, 100, 1000], 1000, 40, 500, 5)


@dataclass
class Report:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, case: str, measured: str, ceiling: str, ratio: str) -> None:
        self.rows.append((case, measured, ceiling, ratio))
        print(f"  {case}: {measured} | {ceiling} | {ratio}", flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.sizes = Sizes.pick(args.tiny)
        self.workdir = workdir
        self.report = Report()
        self.emulator: Emulator | None = None
        flows = workdir / "flows"
        flows.mkdir()
        (flows / "ml-orchestration.yaml").symlink_to(ROOT / "flows" / "ml-orchestration.yaml")
        (flows / "fanout.yaml").symlink_to(ROOT / "bench" / "flows" / "fanout.yaml")
        self.flows_dir = flows

    # -- processes ---------------------------------------------------------------

    def functions(self, delay_ms: float, **env: str) -> Process:
        env = {"DELAY_MS": str(delay_ms), **env}
        return Process.start(
            "functions", ["bench/functions.py"], env, "/health", self.log("functions")
        )

    def service(self, functions: Process, pubsub: bool = False, **env: str) -> Process:
        settings = {name: functions.url + path for name, path in FUNCTIONS.items()}
        settings |= {
            "FLOWS_DIR": str(self.flows_dir),
            "ML_AUTH": "none",
            "ML_MAX_CONCURRENCY_PER_HOST": "10000",
            "FLOW_TIMEOUT_S": "600",
            **env,
        }
        if pubsub:
            assert self.emulator is not None
            settings |= {
                "PUBSUB_EMULATOR_HOST": self.emulator.host,
                "GOOGLE_CLOUD_PROJECT": PROJECT,
            }
        return Process.start("service", ["-m", "service"], settings, "/ready", self.log("service"))

    def bare(self) -> Process:
        return Process.start("bare", ["bench/bare.py"], {}, "/health", self.log("bare"))

    def handwritten(self, functions: Process) -> Process:
        """The engine's ceiling: bench/handwritten.py calling the same functions."""
        urls = {name: functions.url + path for name, path in FUNCTIONS.items()}
        log = self.log("handwritten")
        return Process.start("handwritten", ["bench/handwritten.py"], urls, "/health", log)

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"


def write_outputs(report: Report, out: Path, args: argparse.Namespace) -> None:
    out.mkdir(parents=True, exist_ok=True)
    machine = (
        f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"
    )
    header = (
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine}, "
        f"stand-in functions at {args.delay_ms:g} ms{' (tiny run)' if args.tiny else ''}."
    )
    lines = [header, "", "| case | measured | ceiling (same run) | ratio |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in report.rows]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(report.data, indent=2))
    plot(report.data, out / "performance.png")
    print("\n" + "\n".join(lines))
    print(f"\nwrote {out / 'table.md'}, {out / 'performance.png'}")


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    front = data.get("front_door")
    if front:
        left.plot(front["rate"], front["p50"], "o-", label="POST /orchestrate p50")
        left.plot(front["rate"], front["p99"], "o-", label="POST /orchestrate p99")
        left.plot(front["rate"], front["bare_p99"], "s--", label="bare FastAPI p99")
        left.set_yscale("log")
        left.set_xlabel("offered load (req/s)")
        left.set_ylabel("latency (ms, log)")
        left.set_title("Front door: latency against load")
        left.legend()
    engine = data.get("engine")
    if engine:
        right.plot(engine["in_flight"], engine["p50"], "o-", label="p50")
        right.plot(engine["in_flight"], engine["p99"], "o-", label="p99")
        right.set_xscale("log")
        right.set_yscale("log")
        right.set_xlabel("executions in flight")
        right.set_ylabel("execution time - critical path (ms, log)")
        right.set_title("Engine: overhead against in-flight executions")
        right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
