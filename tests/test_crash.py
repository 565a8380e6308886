"""Crashes, shutdowns and duplicates on the real emulators (Pub/Sub and Firestore).

The service runs as its own process with the Firestore store, so a killed
instance's execution is picked up by the next delivery after its lease.
"""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.dev.emulator import Emulator, EmulatorAdmin, free_port
from tests.conftest import WEBHOOK_SECRET
from tests.support.servers import serve
from tests.support.service import ServiceProcess
from tests.support.standins import StandIns, WebhookReceiver

pytestmark = pytest.mark.emulator

LEASE_S = 4


@dataclass
class Stack:
    service: ServiceProcess
    admin: EmulatorAdmin
    functions: StandIns
    webhook: WebhookReceiver
    webhook_url: str

    def message(self, **input_overrides: Any) -> dict[str, Any]:
        return {
            "execution_id": str(uuid.uuid4()),
            "flow": "ml-orchestration",
            "input": {
                "user_id": f"user-{uuid.uuid4().hex[:8]}",
                "session_id": "s",
                "create_user_embedding": True,
                "process_profession_orchestrator": True,
                "process_vacancy_orchestrator": True,
                **input_overrides,
            },
            "webhook_url": self.webhook_url,
            "requested_at": "2026-11-25T10:00:00Z",
        }

    def calls(self, user_id: str) -> Counter[str]:
        return Counter(c.path for c in self.functions.calls if c.body["user_id"] == user_id)

    def webhooks(self, execution_id: str) -> list[dict[str, Any]]:
        return [
            json.loads(d.body)
            for d in self.webhook.deliveries
            if d.headers["webhook-id"] == execution_id
        ]

    def wait(self, condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, what
            time.sleep(0.05)


@pytest.fixture
def stack(emulator: Emulator, firestore_emulator: Emulator, tmp_path: Path) -> Iterator[Stack]:
    project = f"crash-{uuid.uuid4().hex[:8]}"
    functions = StandIns(delay_s=0.3)
    webhook = WebhookReceiver(WEBHOOK_SECRET)
    port = free_port()
    with serve(functions.app()) as functions_url, serve(webhook.app()) as webhook_url:
        admin = EmulatorAdmin(emulator.host, project)
        admin.topic("requests")
        admin.push_subscription("push", "requests", f"http://127.0.0.1:{port}/pubsub/push")
        env = {
            **functions.env(functions_url),
            "PUBSUB_EMULATOR_HOST": emulator.host,
            "FIRESTORE_EMULATOR_HOST": firestore_emulator.host,
            "GOOGLE_CLOUD_PROJECT": project,
            "ORCHESTRATION_TOPIC": "requests",
            "EXECUTION_STORE": "firestore",
            "EXECUTION_LEASE_S": str(LEASE_S),
            "ML_AUTH": "none",
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
        }
        service = ServiceProcess(env, port, tmp_path / "service.log")
        service.start()
        try:
            yield Stack(service, admin, functions, webhook, f"{webhook_url}/hook")
        finally:
            service.stop()


def test_fifty_publishes_of_one_execution_run_it_once(stack: Stack) -> None:
    message = stack.message()
    data = json.dumps(message).encode()
    for _ in range(50):
        stack.admin.publish("requests", data, {"execution_id": message["execution_id"]})
    stack.wait(lambda: stack.webhooks(message["execution_id"]), 60, "no webhook")
    time.sleep(3)  # every copy pushed, every nacked copy pushed again
    calls = stack.calls(message["input"]["user_id"])
    print(
        f"\n50 publishes of one execution: ML calls {dict(calls)}, webhooks "
        f"{len(stack.webhooks(message['execution_id']))}"
    )
    assert calls == {
        "/create-user-embeddings": 1,
        "/profession-orchestrator": 1,
        "/match-candidato": 1,
        "/match-analysis-user-vacancy": 3,
    }
    assert len(stack.webhooks(message["execution_id"])) == 1


def test_a_killed_instance_s_execution_resumes_after_restart(stack: Stack) -> None:
    message = stack.message()
    user = message["input"]["user_id"]
    stack.admin.publish("requests", json.dumps(message).encode())
    # Kill the instance once the first steps are done and the analyses have started.
    stack.wait(lambda: stack.calls(user)["/match-analysis-user-vacancy"] > 0, 30, "no analysis")
    killed_at = time.monotonic()
    stack.service.signal(signal.SIGKILL)
    before = stack.calls(user)
    stack.service.start()
    stack.wait(lambda: stack.webhooks(message["execution_id"]), 60, "execution lost")
    recovered_s = time.monotonic() - killed_at
    time.sleep(2)
    after = stack.calls(user)
    print(
        f"\nSIGKILL mid-execution: recovered in {recovered_s:.1f} s (lease {LEASE_S} s); "
        f"calls before {dict(before)}, after {dict(after)}"
    )
    [document] = stack.webhooks(message["execution_id"])
    assert document["status"] == "succeeded"
    # Steps that had finished were not called again; only the interrupted one ran again.
    for path in ("/create-user-embeddings", "/profession-orchestrator", "/match-candidato"):
        assert after[path] == 1
    assert after["/match-analysis-user-vacancy"] == before["/match-analysis-user-vacancy"] + 3


def test_sigterm_never_answers_2xx_for_unfinished_work(stack: Stack) -> None:
    """Driven directly, so the push's own answer can be read."""
    stack.functions.delay_s = 20
    message = stack.message()
    envelope = {
        "message": {
            "data": base64.b64encode(json.dumps(message).encode()).decode(),
            "messageId": "direct-1",
        }
    }
    answers: list[int | str] = []

    def push() -> None:
        try:
            response = httpx.post(f"{stack.service.url}/pubsub/push", json=envelope, timeout=60)
            answers.append(response.status_code)
        except httpx.TransportError as exc:
            answers.append(type(exc).__name__)

    thread = threading.Thread(target=push)
    thread.start()
    stack.wait(lambda: stack.calls(message["input"]["user_id"]), 30, "no call started")
    started = time.monotonic()
    code = stack.service.signal(signal.SIGTERM)
    thread.join(timeout=30)
    print(
        f"\nSIGTERM mid-execution: push answered {answers}, process exit {code} "
        f"after {time.monotonic() - started:.1f} s"
    )
    assert answers and answers[0] == 503
    assert stack.webhooks(message["execution_id"]) == []
