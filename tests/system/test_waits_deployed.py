"""Waiting executions across instances on the real emulators (Pub/Sub and Firestore): the
service as its own process, killed while executions wait, restarted on an edited flows
folder, as a deploy between the start and the resume of a wait would."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.dev.emulator import Emulator
from service.dev.standins import StandIns
from service.settings import PROJECT_FLOWS_DIR
from tests.support.deployment import Deployment, deployed

pytestmark = pytest.mark.emulator

NAP = """
input:
  user_id: {type: string, required: true}
steps:
  FIRST:
    call: ${env.PUBLISH_URL}
    body: {user_id: "${input.user_id}", at: FIRST}
  nap:
    after: [FIRST]
    sleep: 2s
  second:
    after: [nap]
    call: ${env.PUBLISH_URL}
    body: {user_id: "${input.user_id}", at: SECOND}
"""


def nap(first: str = "first", second: str = "second") -> str:
    return NAP.replace("FIRST", first).replace("SECOND", second)


def start(stack: Deployment, flow: str) -> str:
    body = {"flow": flow, "user_id": f"{flow}-user", "webhook_url": stack.webhook_url}
    response = httpx.post(f"{stack.url}/orchestrate", json=body, timeout=30)
    assert response.status_code == 202, response.text
    execution_id: str = response.json()["execution_id"]
    return execution_id


def status(stack: Deployment, execution_id: str) -> str:
    value: str = stack.document(execution_id)["status"]
    return value


def marks(stack: Deployment) -> list[Any]:
    return sorted(call.body["at"] for call in stack.functions.called("/publish-predictions"))


def test_waits_outlive_a_killed_instance_and_a_deploy_that_edits_their_flow(
    emulator: Emulator, firestore_emulator: Emulator, tmp_path: Path
) -> None:
    """Suspended on one instance, killed (-9) while waiting, resumed by the next instance
    on an edited flows folder: each execution runs the version it started on, a removed
    flow's too; a re-drive moves one to today's version."""
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "nap.yaml").write_text(nap())
    (folder / "gone.yaml").write_text(nap(second="gone"))
    settings = {
        "FIRESTORE_EMULATOR_HOST": firestore_emulator.host,
        "EXECUTION_STORE": "firestore",
        "EXECUTION_LEASE_S": "4",
        "FLOWS_DIR": f"{PROJECT_FLOWS_DIR}:{folder}",
        "INLINE_WAIT_S": "0",
        "WAKE_INTERVAL_S": "0",  # as on Cloud Run: only POST /executions/wake resumes
    }
    functions = StandIns()
    with deployed(emulator, functions, tmp_path / "service.log", settings) as stack:
        napping, removed, cancelled = start(stack, "nap"), start(stack, "gone"), start(stack, "nap")
        for execution_id in (napping, removed, cancelled):
            stack.wait(lambda e=execution_id: status(stack, e) == "waiting", 30, "not waiting")
        v1 = stack.document(napping)["flow_version"]
        cancel = httpx.post(f"{stack.url}/executions/{cancelled}/cancel", timeout=30)
        assert cancel.json()["status"] == "cancelling"
        assert stack.wait_for_webhook(cancelled)["status"] == "cancelled"

        stack.service.signal(signal.SIGKILL)
        (folder / "nap.yaml").write_text(nap(first="renamed", second="edited"))
        (folder / "gone.yaml").unlink()
        stack.service.start()

        flow = httpx.get(f"{stack.url}/flows/nap", timeout=30).json()
        assert flow["version"] != v1 and flow["versions_in_use"] == {v1: 1}
        assert httpx.get(f"{stack.url}/flows/gone", timeout=30).status_code == 404
        woken = httpx.post(f"{stack.url}/executions/wake", timeout=30).json()
        assert woken == {"woken": 2}
        for execution_id in (napping, removed):
            document = stack.wait_for_webhook(execution_id)
            assert document["status"] == "succeeded", document
        assert marks(stack) == ["first", "first", "first", "gone", "second"]

        redriven = httpx.post(
            f"{stack.url}/executions/{cancelled}/redrive",
            json={"flow_version": "current"},
            timeout=30,
        )
        assert redriven.status_code == 202, redriven.text
        stack.wait(lambda: status(stack, cancelled) == "waiting", 30, "re-drive not waiting")
        assert stack.document(cancelled)["flow_version"] == flow["version"]
        stack.wait(
            lambda: httpx.post(f"{stack.url}/executions/wake", timeout=30).json()["woken"] == 1,
            10,
            "the re-driven execution was not woken",
        )
        stack.wait(lambda: status(stack, cancelled) == "succeeded", 30, "re-drive not done")
        assert marks(stack) == ["edited", "first", "first", "first", "gone", "renamed", "second"]
