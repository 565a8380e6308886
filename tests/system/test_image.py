"""The Dockerfile (no Docker engine here: its parts are checked and its command run)
and the smoke suite scripts/test-local.sh against a running service."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from service.dev.emulator import free_port
from service.dev.servers import serve
from service.dev.standins import StandIns
from tests.support.service import ServiceProcess

# Starts processes or tools (or fuzzes): the full tier only (`./scripts/test.sh`).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions(name: str) -> list[str]:
    return re.findall(rf"^{name} (.+)$", DOCKERFILE, flags=re.M)


def test_the_image_copies_what_the_app_needs_and_nothing_secret() -> None:
    sources = [
        part for line in instructions("COPY") if "--from" not in line for part in line.split()[:-1]
    ]
    assert sorted(sources) == ["flows", "requirements.lock", "service"]
    for source in sources:
        assert (ROOT / source).exists()
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[1] == "*"  # everything is out unless listed, .env and .venv included
    assert {"!service/", "!flows/", "!requirements.lock"} <= set(ignored)


def test_the_image_installs_the_lock_with_hashes_checked() -> None:
    [install] = [line for line in instructions("RUN") if "pip install" in line]
    assert "--require-hashes" in install and "-r requirements.lock" in install


def test_the_image_runs_as_a_non_root_user_on_port() -> None:
    assert instructions("USER")[-1] not in {"root", "0"}
    assert "PORT=8080" in DOCKERFILE
    assert "SECRET" not in DOCKERFILE  # secrets come from the environment or Secret Manager


def test_the_command_starts_the_app(tmp_path: Path) -> None:
    """CMD as written, with the image's ENV (FLOWS_DIR pointed at this checkout)."""
    command = json.loads(instructions("CMD")[-1])
    env = {"FLOWS_DIR": str(ROOT / "flows"), "ML_AUTH": "none", "PYTHONUNBUFFERED": "1"}
    functions = StandIns()
    with serve(functions.app()) as url:
        service = ServiceProcess({**env, **functions.env(url)}, free_port(), tmp_path / "log")
        assert command == ["python", "-m", "service"]
        service.start()  # runs `python -m service`, waits for /ready
        try:
            smoke = subprocess.run(
                ["bash", str(ROOT / "scripts" / "test-local.sh"), service.url],
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ, "WAIT_S": "30"},
            )
        finally:
            service.stop()
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    for check in ("GET /health", "GET /ready", "POST /orchestrate", "execution succeeded"):
        assert f"ok: {check}" in smoke.stdout


def test_the_smoke_suite_fails_on_a_dead_service() -> None:
    smoke = subprocess.run(
        ["bash", str(ROOT / "scripts" / "test-local.sh"), f"http://127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert smoke.returncode == 2
    assert "GET /health" in smoke.stderr and "not reachable" in smoke.stderr
