"""The service deployed on this machine as on Cloud Run: its own process, pushed to by the
real Pub/Sub emulator, calling the stand-ins, delivering to a webhook receiver and to a
result topic read by a pull subscription. One setup for every end-to-end test."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from service.dev.emulator import Emulator, EmulatorAdmin, free_port
from service.dev.servers import serve
from service.dev.standins import Delivery, StandIns, WebhookReceiver
from tests.support.project import WEBHOOK_SECRET
from tests.support.service import ServiceProcess
from tests.support.waits import until

REQUESTS, RESULTS = "requests", "results"


@dataclass
class Deployment:
    service: ServiceProcess
    admin: EmulatorAdmin
    functions: StandIns
    webhook: WebhookReceiver
    webhook_url: str

    @property
    def url(self) -> str:
        return self.service.url

    def seed(self, **overrides: Any) -> dict[str, Any]:
        """A front-door request that runs every step of the default flow, for a new user."""
        return {
            "user_id": f"user-{uuid.uuid4().hex[:8]}",
            "session_id": "session-1",
            "create_user_embedding": True,
            "process_profession_orchestrator": True,
            "process_vacancy_orchestrator": True,
            "webhook_url": self.webhook_url,
            **overrides,
        }

    def message(self, **input_overrides: Any) -> dict[str, Any]:
        """The same as a request message, for a producer that publishes it directly."""
        seed = self.seed(**input_overrides)
        return {
            "execution_id": str(uuid.uuid4()),
            "flow": "ml-orchestration",
            "webhook_url": seed.pop("webhook_url"),
            "input": seed,
            "requested_at": "2026-11-25T10:00:00Z",
        }

    def calls(self, user_id: str) -> Counter[str]:
        return Counter(c.path for c in self.functions.calls if c.body["user_id"] == user_id)

    def deliveries(self, execution_id: str) -> list[Delivery]:
        """The webhook deliveries of `execution_id`'s first run (their webhook-id)."""
        return [d for d in self.webhook.deliveries if d.headers["webhook-id"] == execution_id]

    def webhooks(self, execution_id: str) -> list[dict[str, Any]]:
        """The documents delivered for `execution_id`, every run's."""
        documents = (json.loads(d.body) for d in self.webhook.deliveries)
        return [document for document in documents if document["execution_id"] == execution_id]

    def wait(self, condition: Callable[[], Any], timeout: float, what: str) -> None:
        until(condition, timeout, what)

    def wait_for_webhook(self, execution_id: str, timeout: float = 30) -> dict[str, Any]:
        """The first document delivered for `execution_id`, once there is one."""
        self.wait(lambda: self.webhooks(execution_id), timeout, f"no webhook for {execution_id}")
        return self.webhooks(execution_id)[0]

    def results(self, timeout: float, until: int) -> list[dict[str, Any]]:
        """What the result topic has, pulled until `until` messages or `timeout`."""
        pulled: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(pulled) < until:
            pulled += self.admin.pull("results-pull")
            time.sleep(0.1)
        return pulled

    def document(self, execution_id: str) -> dict[str, Any]:
        """The whole execution document, as GET /executions/{id} reads it."""
        response = httpx.get(f"{self.url}/executions/{execution_id}", timeout=30)
        response.raise_for_status()
        document: dict[str, Any] = response.json()
        return document


@contextmanager
def deployed(
    emulator: Emulator, functions: StandIns, log: Path, settings: dict[str, str]
) -> Iterator[Deployment]:
    """The service with `settings` over the defaults below, in a project of its own."""
    project = f"e2e-{uuid.uuid4().hex[:8]}"
    webhook = WebhookReceiver(WEBHOOK_SECRET)
    port = free_port()
    with serve(functions.app()) as functions_url, serve(webhook.app()) as webhook_url:
        admin = EmulatorAdmin(emulator.host, project)
        admin.topic(REQUESTS)
        admin.topic(RESULTS)
        admin.pull_subscription("results-pull", RESULTS)
        admin.push_subscription("push", REQUESTS, f"http://127.0.0.1:{port}/pubsub/push")
        env = {
            **functions.env(functions_url),
            "PUBSUB_EMULATOR_HOST": emulator.host,
            "GOOGLE_CLOUD_PROJECT": project,
            "ORCHESTRATION_TOPIC": REQUESTS,
            "RESULT_TOPIC": RESULTS,
            "ML_AUTH": "none",
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "DEFAULT_WEBHOOK_URL": f"{webhook_url}/hook",  # for messages that name none
            "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
            "LOG_FORMAT": "json",
            **settings,
        }
        service = ServiceProcess(env, port, log)
        service.start()
        try:
            yield Deployment(service, admin, functions, webhook, f"{webhook_url}/hook")
        finally:
            service.stop()
