"""The benchmark keeps working: `python -m bench --tiny` runs every case (no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Starts processes or tools (or fuzzes): the full tier only (`./scripts/test.sh`).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.emulator
def test_the_benchmark_runs_every_case_at_a_tiny_size(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = (tmp_path / "table.md").read_text()
    for case in (
        "front door, max rate",
        "front door at 20 req/s",
        "engine overhead, 1 in flight",
        "engine vs hand-written, 1 in flight",
        "engine CPU per execution (6 calls, 20 in flight)",
        "fan-out, 10 calls at once",
        "memory, 50 executions in flight",
        "vs the original",
        "through the emulator",
        "front door, max rate (50 connections), 2 workers",
        "engine at 100 in flight, 2 workers",
        "store: default flow, the original request",
        "store: a wake",
        "store: a cache hit",
        "first execution after start (ID tokens)",
    ):
        assert case in table
    assert "not measured" not in table
    assert (tmp_path / "performance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("module", "args", "printed"),
    [
        ("bench.expressions", ["--runs", "5", "--sizes", "3"], "now, min_score 0.5"),
        ("bench.tracing", ["--runs", "5"], "tracing on, sampled 1.0"),
        ("bench.protection", ["--items", "40", "--calls", "20"], "a cache hit"),
        ("bench.children", ["--children", "20"], "memory store: 20 children in"),
        ("bench.triggers", ["--runs", "20", "--rounds", "1"], "an event's push"),
        pytest.param(
            "bench.waits",
            ["--runs", "3", "--held", "20", "--many", "600"],
            "600 resumes published",
            marks=pytest.mark.emulator,
        ),
    ],
)
def test_the_engine_benchmarks_run_at_a_tiny_size(
    module: str, args: list[str], printed: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert printed in done.stdout
