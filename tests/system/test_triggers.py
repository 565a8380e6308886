"""Flows started by events, end to end on the real Pub/Sub emulator: a producer publishes
to a topic, the emulator pushes to the trigger's endpoint, the execution it starts goes
through the requests topic and its own push. The service runs as its own process."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from service.dev.emulator import Emulator, EmulatorAdmin
from service.dev.standins import StandIns
from service.engine.triggers import execution_id
from service.settings import PROJECT_FLOWS_DIR
from tests.api.test_events import EXPORTS, notification
from tests.support.deployment import Deployment, deployed

pytestmark = pytest.mark.emulator

# Each message of the topic is pushed to the trigger by this many subscriptions at once:
# the same message id, as a redelivery has it.
COPIES = 5


@pytest.fixture(scope="module")
def deployment(
    emulator: Emulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("flows")
    (folder / "exports.yaml").write_text(EXPORTS)
    log = tmp_path_factory.mktemp("service") / "service.log"
    settings = {"FLOWS_DIR": f"{PROJECT_FLOWS_DIR}:{folder}"}
    with deployed(emulator, StandIns(delay_s=0.05), log, settings) as running:
        admin = running.admin
        admin.topic("exports")
        for copy in range(COPIES):
            admin.push_subscription(
                f"trigger-exports-landed-{copy}",
                "exports",
                f"{running.url}/pubsub/events/exports/landed",
            )
        lines = "projects/data-team-1/topics/user-lines"  # another project's topic
        admin.topic(lines)
        admin.push_subscription(
            "trigger-exports-lines", lines, f"{running.url}/pubsub/events/exports/lines"
        )
        yield running


def outcome(deployment: Deployment, trigger: str, outcome: str) -> float:
    wanted = f'orchestrator_trigger_total{{flow="exports",outcome="{outcome}",trigger="{trigger}"}}'
    for line in httpx.get(f"{deployment.url}/metrics").text.splitlines():
        if line.startswith(wanted):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def reaches(deployment: Deployment, named: str, status: str) -> dict[str, object]:
    seen: dict[str, object] = {}

    def there() -> bool:
        response = httpx.get(f"{deployment.url}/executions/{named}")
        seen.update(response.json() if response.status_code == 200 else {})
        return seen.get("status") == status

    deployment.wait(there, 30, f"{named} never {status}")
    return seen


def test_a_storage_notification_pushed_five_times_at_once_starts_one_execution(
    deployment: Deployment,
) -> None:
    data, attributes = notification(user_id="u-e2e", name="exports/u-e2e.json")
    message_id = deployment.admin.publish("exports", data, attributes)
    named = execution_id("exports", "landed", message_id)
    done = reaches(deployment, named, "succeeded")
    assert done["input"] == {"user_id": "u-e2e", "source": "gs://bucket/exports/u-e2e.json"}
    assert done["trigger"] == "landed"
    deployment.wait(lambda: outcome(deployment, "landed", "started") >= COPIES, 10, "not acked")
    time.sleep(2)  # a nacked copy would be pushed again within a second or so
    assert deployment.calls("u-e2e") == {"/match-candidato": 1}
    assert reaches(deployment, named, "succeeded")["run"] == 1
    # Delivered as any execution: the default webhook.
    assert [d["status"] for d in deployment.webhooks(named)] == ["succeeded"]


def test_an_event_its_when_refuses_is_acked_and_starts_nothing(deployment: Deployment) -> None:
    data, attributes = notification(user_id="u-deleted", event="OBJECT_DELETE")
    before = outcome(deployment, "landed", "filtered")
    message_id = deployment.admin.publish("exports", data, attributes)
    deployment.wait(
        lambda: outcome(deployment, "landed", "filtered") == before + COPIES, 10, "not filtered"
    )
    named = execution_id("exports", "landed", message_id)
    assert httpx.get(f"{deployment.url}/executions/{named}").status_code == 404
    assert deployment.calls("u-deleted") == {}


def test_a_misfit_event_is_one_rejected_execution_naming_the_field(
    deployment: Deployment,
) -> None:
    data, attributes = notification(user_id="u" * 65, name="exports/long.json")
    message_id = deployment.admin.publish("exports", data, attributes)
    rejected = reaches(deployment, execution_id("exports", "landed", message_id), "rejected")
    assert "input.user_id: String should have at most 64 characters" in str(rejected["error"])
    listed = httpx.get(
        f"{deployment.url}/executions", params={"flow": "exports", "status": "rejected"}
    ).json()["executions"]
    assert [e["execution_id"] for e in listed] == [rejected["execution_id"]]


def test_data_that_is_not_json_reaches_the_flow_as_text(deployment: Deployment) -> None:
    producer = EmulatorAdmin(deployment.admin.host, "data-team-1")
    message_id = producer.publish("user-lines", b"user-from-lines")
    done = reaches(deployment, execution_id("exports", "lines", message_id), "succeeded")
    assert done["input"] == {"user_id": "user-from-lines", "source": message_id}
    assert done["result"] == done["input"]
