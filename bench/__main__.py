"""`python -m bench`: the orchestrator's overhead, each figure against a ceiling measured in
the same run on the same machine. Prints a table, writes table.md, results.json and
performance.png into --out.

Cases (stand-in ML functions answer after --delay-ms, in their own process):
  1. front door   POST /orchestrate (publish awaited, emulator) vs a bare FastAPI 202
  2. engine       the default flow pushed straight to /pubsub/push at 1/100/1000 in flight:
                  execution time minus its critical path called by a bare client
  3. fan-out      one execution calling 10/100/1000 functions at once vs a bare client loop
  4. memory       RSS of the service with 1,000 executions in flight
  5. original     the seed's test payload run one call at a time (the monolith) vs ours
  6. emulator     end-to-end executions/s through the emulator vs its own push rate
--tiny runs every case at a small size (CI checks that the benchmark keeps working).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.load import closed_loop, in_flight, open_loop
from bench.processes import ROOT, Process
from service.dev.demo import FUNCTIONS
from service.dev.emulator import Emulator, EmulatorAdmin, find_emulator
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

    @classmethod
    def pick(cls, tiny: bool) -> Sizes:
        if tiny:
            return cls(1.0, [20], [1, 10], [10, 50], 50, 6)
        return cls(5.0, [250, 500, 1000], [1, 100, 1000], [10, 100, 1000], 1000, 40)


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

    def functions(self, delay_ms: float) -> Process:
        env = {"DELAY_MS": str(delay_ms)}
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

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    # -- cases -------------------------------------------------------------------

    async def front_door(self, functions: Process) -> None:
        if self.emulator is None:
            self.report.add("front door", "not measured: no Pub/Sub emulator", "", "")
            return
        EmulatorAdmin(self.emulator.host, PROJECT).topic(TOPIC)
        service, bare = self.service(functions, pubsub=True), self.bare()
        body = json.dumps(SEED).encode()
        headers = {"content-type": "application/json"}

        def poster(url: str) -> Callable[[aiohttp.ClientSession], Any]:
            async def post(session: aiohttp.ClientSession) -> str | None:
                async with session.post(url + "/orchestrate", data=body, headers=headers) as r:
                    await r.read()
                    return None if r.status == 202 else str(r.status)

            return post

        try:
            for process in (service, bare):  # warm up
                await closed_loop(poster(process.url), 10, 0.5)
            cpu = service.cpu_seconds()
            ours = await closed_loop(poster(service.url), 50, self.sizes.seconds)
            ours_cpu = (service.cpu_seconds() - cpu) / max(1, len(ours.values)) * 1000
            cpu = bare.cpu_seconds()
            ceiling = await closed_loop(poster(bare.url), 50, self.sizes.seconds)
            bare_cpu = (bare.cpu_seconds() - cpu) / max(1, len(ceiling.values)) * 1000
            self.report.add(
                "front door, max rate (50 connections)",
                f"{ours.rate:,.0f} req/s, {ours_cpu:.2f} ms CPU/request",
                f"bare FastAPI {ceiling.rate:,.0f} req/s, {bare_cpu:.2f} ms CPU/request",
                f"{ours.rate / ceiling.rate:.0%}",
            )
            curve: dict[str, list[float]] = {"rate": [], "p50": [], "p99": [], "bare_p99": []}
            for rate in self.sizes.rates:
                at = await open_loop(poster(service.url), rate, self.sizes.seconds)
                bare_at = await open_loop(poster(bare.url), rate, self.sizes.seconds)
                curve["rate"].append(rate)
                curve["p50"].append(at.percentile(50))
                curve["p99"].append(at.percentile(99))
                curve["bare_p99"].append(bare_at.percentile(99))
                self.report.add(
                    f"front door at {rate} req/s",
                    f"p50 {at.percentile(50):.1f} ms, p99 {at.percentile(99):.1f} ms"
                    + (f", failures: {at.errors}" if at.errors else ""),
                    f"bare p99 {bare_at.percentile(99):.1f} ms",
                    f"achieved {at.rate:,.0f} req/s",
                )
            self.report.data["front_door"] = curve
        finally:
            service.stop()
            bare.stop()

    async def engine(self, functions: Process) -> None:
        service = self.service(functions)
        critical = await bare_chain(functions.url)
        curve: dict[str, list[float]] = {"in_flight": [], "p50": [], "p99": []}
        try:
            await in_flight(pusher(service.url, FULL), 1, 3)  # warm up
            for concurrency in self.sizes.in_flight:
                total = max(20, concurrency * 2) if concurrency > 1 else 20
                result = await in_flight(pusher(service.url, FULL), concurrency, total)
                p50, p99 = result.percentile(50) - critical, result.percentile(99) - critical
                curve["in_flight"].append(concurrency)
                curve["p50"].append(p50)
                curve["p99"].append(p99)
                self.report.add(
                    f"engine overhead, {concurrency} in flight",
                    f"p50 +{p50:.1f} ms, p99 +{p99:.1f} ms"
                    + (f", failures: {result.errors}" if result.errors else ""),
                    f"critical path {critical:.0f} ms (bare client)",
                    f"p50 {p50 / critical:.1%} of it, {result.rate:,.0f} executions/s",
                )
            self.report.data["engine"] = curve
        finally:
            service.stop()

    async def fan_out(self, functions: Process) -> None:
        service = self.service(functions)
        try:
            await in_flight(pusher(service.url, {"items": list(range(10))}, "fanout"), 1, 2)
            for calls in self.sizes.fan_out:
                # CPU time comes in 10 ms ticks: repeat until ~1,000 calls were made.
                repeats = max(3, 1000 // calls)
                walls = []
                cpu = service.cpu_seconds()
                for _ in range(repeats):
                    result = await in_flight(
                        pusher(service.url, {"items": list(range(calls))}, "fanout"), 1, 1
                    )
                    walls.append(result.values[0])
                cpu = (service.cpu_seconds() - cpu) / (calls * repeats) * 1000
                bare_wall, bare_cpu = await bare_loop(functions.url, calls)
                wall = statistics.median(walls)
                self.report.add(
                    f"fan-out, {calls} calls at once",
                    f"{wall:.0f} ms wall, {cpu:.2f} ms CPU/call",
                    f"bare aiohttp loop {bare_wall:.0f} ms, {bare_cpu:.2f} ms CPU/call",
                    f"wall {wall / bare_wall - 1:+.0%}, CPU {cpu / bare_cpu:.1f}x the bare loop's",
                )
        finally:
            service.stop()

    async def memory(self) -> None:
        slow = self.functions(delay_ms=2000)
        service = self.service(slow)
        try:
            idle = service.rss_mb()
            peak = idle
            done = asyncio.Event()

            async def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, service.rss_mb())
                    await asyncio.sleep(0.1)

            sampler = asyncio.create_task(sample())
            count = self.sizes.memory
            result = await in_flight(pusher(service.url, FULL), count, count)
            done.set()
            await sampler
            self.report.add(
                f"memory, {count} executions in flight",
                f"RSS peak {peak:.0f} MB"
                + (f", failures: {result.errors}" if result.errors else ""),
                f"idle {idle:.0f} MB",
                f"{(peak - idle) * 1024 / count:.0f} KB per execution",
            )
        finally:
            service.stop()
            slow.stop()

    async def original(self, functions: Process) -> None:
        seed_ours = await self._seed_execution(functions)
        sequential = await monolith(functions.url)
        self.report.add(
            "vs the original (seed payload, 3 vacancies)",
            f"ours {seed_ours:.0f} ms",
            f"one call at a time {sequential:.0f} ms",
            f"{sequential / seed_ours:.2f}x faster",
        )
        self.report.data["original"] = {"ours_ms": seed_ours, "sequential_ms": sequential}

    async def _seed_execution(self, functions: Process) -> float:
        service = self.service(functions)
        try:
            await in_flight(pusher(service.url, SEED), 1, 3)
            return (await in_flight(pusher(service.url, SEED), 1, 10)).percentile(50)
        finally:
            service.stop()

    async def through_emulator(self, functions: Process) -> None:
        if self.emulator is None:
            self.report.add("through the emulator", "not measured: no Pub/Sub emulator", "", "")
            return
        admin = EmulatorAdmin(self.emulator.host, PROJECT)
        bare = self.bare()
        service = self.service(functions, pubsub=True)
        count = self.sizes.end_to_end
        try:
            admin.topic("ceiling")
            admin.push_subscription("ceiling-push", "ceiling", f"{bare.url}/pubsub/push")
            ceiling = await pushed_rate(admin, "ceiling", count, lambda: count_pushes(bare))
            admin.push_subscription("e2e-push", TOPIC, f"{service.url}/pubsub/push")
            admin.pull_subscription("e2e-seen", TOPIC)
            ours = await end_to_end_rate(service.url, count)
            self.report.add(
                f"through the emulator, {count} executions",
                f"{ours:.1f} executions/s",
                f"emulator push rate to a 204 endpoint {ceiling:.1f}/s",
                f"{ours / ceiling:.0%}",
            )
        finally:
            service.stop()
            bare.stop()

    # -- run ---------------------------------------------------------------------

    async def run(self, cases: list[str]) -> None:
        functions = self.functions(self.args.delay_ms)
        steps: dict[str, Callable[[], Awaitable[None]]] = {
            "front-door": lambda: self.front_door(functions),
            "engine": lambda: self.engine(functions),
            "fan-out": lambda: self.fan_out(functions),
            "memory": self.memory,
            "original": lambda: self.original(functions),
            "emulator": lambda: self.through_emulator(functions),
        }
        try:
            for case in cases:
                print(f"{case} ...", flush=True)
                await steps[case]()
        finally:
            functions.stop()


def pusher(url: str, flow_input: dict[str, Any], flow: str = "ml-orchestration") -> Any:
    """Sends the push envelope of a new execution; true when acked (204)."""

    async def push(session: aiohttp.ClientSession) -> str | None:
        message = {
            "execution_id": str(uuid.uuid4()),
            "flow": flow,
            "input": flow_input,
            "webhook_url": None,
            "requested_at": datetime.now(UTC).isoformat(),
        }
        data = base64.b64encode(json.dumps(message).encode()).decode()
        envelope = {"message": {"data": data, "messageId": message["execution_id"]}}
        async with session.post(url + "/pubsub/push", json=envelope) as response:
            text = (await response.read()).decode(errors="replace")[:80]
            return None if response.status == 204 else f"{response.status} {text}".strip()

    return push


async def bare_loop(functions_url: str, calls: int) -> tuple[float, float]:
    """The same calls from a bare aiohttp loop: wall ms and CPU ms per call."""
    body = {"user_id": "bench", "session_id": "bench", "vacancy_id": "v"}
    url = functions_url + FUNCTIONS["DEFAULT_MATCH_ANALYSIS_USER_VACANCY_URL"]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> None:
            async with session.post(url, json=body) as response:
                await response.read()

        await asyncio.gather(*(one() for _ in range(min(calls, 10))))  # warm up
        repeats = max(3, 1000 // calls)
        walls = []
        cpu = time.process_time()
        for _ in range(repeats):
            started = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(calls)))
            walls.append((time.perf_counter() - started) * 1000)
        cpu_per_call = (time.process_time() - cpu) / (calls * repeats) * 1000
    return statistics.median(walls), cpu_per_call


async def bare_chain(functions_url: str) -> float:
    """The default flow's critical path called by a bare client: embeddings, matching, then
    the analyses at once (median ms). The ceiling the engine's overhead is measured from."""
    base = {"user_id": "u", "session_id": "s"}
    async with aiohttp.ClientSession() as session:

        async def call(name: str, body: dict[str, Any]) -> Any:
            async with session.post(functions_url + FUNCTIONS[name], json=body) as response:
                return await response.json()

        async def once() -> float:
            started = time.perf_counter()
            await call("DEFAULT_CREATE_USER_EMBEDDINGS_URL", base)
            matches = await call("DEFAULT_MATCH_CANDIDATO_URL", base)
            analysis = "DEFAULT_MATCH_ANALYSIS_USER_VACANCY_URL"
            await asyncio.gather(
                *(
                    call(analysis, {**base, "vacancy_id": v["vacancy_id"]})
                    for v in matches["vacancies"]
                )
            )
            return (time.perf_counter() - started) * 1000

        await once()
        return statistics.median([await once() for _ in range(10)])


async def monolith(functions_url: str) -> float:
    """The original Cloud Function: the seed payload's calls, one after another (median ms)."""
    base = {"user_id": SEED["user_id"], "session_id": SEED["session_id"]}

    def url(name: str) -> str:
        return functions_url + FUNCTIONS[name]

    async with aiohttp.ClientSession() as session:

        async def call(name: str, body: dict[str, Any]) -> Any:
            async with session.post(url(name), json=body) as response:
                return await response.json()

        async def once() -> float:
            started = time.perf_counter()
            await call("DEFAULT_PROFESSION_ORCHESTRATOR_URL", base)
            matches = await call("DEFAULT_MATCH_CANDIDATO_URL", base)
            for vacancy in matches["vacancies"]:
                body = {**base, "vacancy_id": vacancy["vacancy_id"]}
                await call("DEFAULT_MATCH_ANALYSIS_USER_VACANCY_URL", body)
            return (time.perf_counter() - started) * 1000

        await once()
        return statistics.median([await once() for _ in range(10)])


def count_pushes(bare: Process) -> int:
    import httpx

    return int(httpx.get(bare.url + "/count", timeout=5).json()["pushes"])


async def pushed_rate(
    admin: EmulatorAdmin, topic: str, count: int, received: Callable[[], int]
) -> float:
    """Messages per second the emulator pushes to an endpoint that acks at once."""
    before = received()
    started = time.perf_counter()
    for n in range(count):
        admin.publish(topic, json.dumps({"n": n}).encode())
    while received() - before < count:  # noqa: ASYNC110 - polling another process
        await asyncio.sleep(0.02)
    return count / (time.perf_counter() - started)


async def end_to_end_rate(url: str, count: int) -> float:
    """Executions per second from the first POST /orchestrate to the last one's end."""
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        ids = []
        for _ in range(count):
            async with session.post(url + "/orchestrate", json=SEED) as response:
                ids.append((await response.json())["execution_id"])
        pending = set(ids)
        while pending:
            for execution_id in list(pending):
                async with session.get(f"{url}/executions/{execution_id}") as response:
                    if response.status == 200 and (await response.json())["status"] != "running":
                        pending.discard(execution_id)
            await asyncio.sleep(0.05)
        return count / (time.perf_counter() - started)


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


CASES = ("front-door", "engine", "fan-out", "memory", "original", "emulator")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="every case, small (for CI)")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="stand-in latency")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "performance")
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"some of {','.join(CASES)}; a partial run prints its rows and writes nothing",
    )
    args = parser.parse_args()
    cases = args.cases.split(",")
    unknown = set(cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory() as workdir:
        bench = Bench(args, Path(workdir))
        binary = find_emulator()
        if binary:
            bench.emulator = Emulator.start(binary, log=Path(workdir) / "emulator.log")
        try:
            asyncio.run(bench.run(cases))
        finally:
            if bench.emulator:
                bench.emulator.stop()
        if cases == list(CASES):
            write_outputs(bench.report, args.out, args)
        else:
            print("\n".join(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in bench.report.rows))


if __name__ == "__main__":
    main()
