"""The newcomer's command: `python -m service.dev` runs a flow end to end and prints the result."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.dev.emulator import free_port

# Starts processes or tools (or fuzzes): the full tier only (`./scripts/test.sh`).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent.parent


def wait_for(pattern: str, log: Path, process: subprocess.Popen[bytes], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if re.search(pattern, text):
            return text
        assert process.poll() is None, f"exited early:\n{text}"
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} not printed:\n{log.read_text(errors='replace')}")


@pytest.mark.parametrize(
    ("transport", "stop"),
    [
        pytest.param("emulator", signal.SIGTERM, marks=pytest.mark.emulator),
        pytest.param("emulator", signal.SIGINT, marks=pytest.mark.emulator),
        ("in-process", signal.SIGINT),
    ],
)
def test_the_dev_stack_prints_a_curl_that_completes_a_flow(
    tmp_path: Path, transport: str, stop: signal.Signals
) -> None:
    ports = {name: str(free_port()) for name in ("PORT", "DEMO_PORT", "EMULATOR_PORT")}
    env = {**os.environ, **ports, "DEMO_DELAY_MS": "10", "LOG_FORMAT": "json"}
    env |= {"DEMO_JOB_S": "1", "DEMO_REVIEW_S": "0.5"}  # the example's poll still waits 5 s
    if transport == "in-process":
        env["PUBSUB_EMULATOR_BIN"] = str(tmp_path / "no-emulator-here")
    log = tmp_path / "dev.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.dev"],
            cwd=tmp_path,
            env={**env, "PYTHONPATH": str(ROOT)},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        text = wait_for(r"Start a flow:", log, process)
        expected = "Pub/Sub emulator at" if transport == "emulator" else "in-process transport"
        assert expected in text
        curl = text[text.index("curl -s") :].split("\n\n")[0]
        result = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30)
        assert '"status":"accepted"' in result.stdout, result
        printed = wait_for(
            r">>> webhook \(signature verified\): execution \S+ succeeded", log, process
        )
        # The default flow's result: the vacancies with the stand-ins' analyses.
        assert "[result: user_id, session_id, professions, vacancies]" in printed
        assert '"fit": 0.8' in printed
        if transport == "in-process":  # the example of waits too: once is enough
            example = text[text.index("curl -s", text.index("Or one that waits")) :]
            example = example.split("\n\n")[0]
            started = subprocess.run(["bash", "-c", example], capture_output=True, text=True)
            assert '"flow":"batch-review"' in started.stdout, started
            waited = wait_for(r"execution \S+ succeeded in \d+ ms \[start_batch", log, process)
            assert "review=succeeded, publish=succeeded" in waited
            children = text[text.index("curl -s", text.index("child execution of its own")) :]
            children = children.split("\n\n")[0]
            started = subprocess.run(["bash", "-c", children], capture_output=True, text=True)
            assert '"flow":"score-vacancies"' in started.stdout, started
            scored = wait_for(r"succeeded in \d+ ms \[result: user_id, scores\]", log, process)
            assert '"fit": 0.8' in scored[scored.rindex("[result: user_id, scores]") :]
        # A file landing in a bucket: its notification starts score-vacancies for its user
        # (published to the emulator's topic, or pushed as Pub/Sub would in process).
        before = wait_for(r"Or let a file landing", log, process).count("[result: user_id, scores]")
        notify = text[text.index("curl -s", text.index("Or let a file landing")) :]
        delivered = subprocess.run(
            ["bash", "-c", notify.split("\n\n")[0]], capture_output=True, text=True, timeout=30
        )
        assert delivered.returncode == 0, delivered
        pattern = rf"(?s)(.*succeeded in \d+ ms \[result: user_id, scores\]){{{before + 1}}}"
        wait_for(pattern, log, process)
    finally:
        process.send_signal(stop)
        process.wait(timeout=30)
    # Everything it started has stopped, the emulator included.
    for port in ports.values():
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            raise AssertionError(f"port {port} still answers")
        except httpx.TransportError:
            pass
