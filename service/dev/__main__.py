"""`python -m service.dev`: the orchestrator with the stand-in ML functions, on this machine.

Starts the stand-ins (service/dev/standins.py: the ML functions, each waiting
DEMO_DELAY_MS, a batch API and a reviewer for the example flow of waits, and a
webhook receiver that prints each result), the Pub/Sub emulator if it is installed
(else the embedded in-process transport), and the service with the project's flows
and its examples (flows/examples/); on the emulator, a topic and a push subscription
for each event trigger of the flows. Prints a curl to paste for each, and one that
delivers a sample Cloud Storage notification to a trigger. Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import signal
import sys
from pathlib import Path

import uvicorn

from service.app import create_app, load_checked_flows
from service.dev.emulator import Emulator, EmulatorAdmin, find_emulator
from service.dev.standins import StandIns, WebhookReceiver
from service.engine.flow import Flow
from service.errors import ConfigError
from service.settings import Settings

PORT = int(os.environ.get("PORT", "8080"))
DEMO_PORT = int(os.environ.get("DEMO_PORT", "8081"))
EMULATOR_PORT = int(os.environ.get("EMULATOR_PORT", "8085"))
PROJECT = "local-dev"

CURL = f"""curl -s -X POST http://127.0.0.1:{PORT}/orchestrate \\
  -H 'Content-Type: application/json' \\
  -d '{{"user_id": "test_user_123", "session_id": "test_session_456",
       "create_user_embedding": true, "process_profession_orchestrator": true,
       "process_vacancy_orchestrator": true}}'"""
EXAMPLE_CURL = f"""curl -s -X POST http://127.0.0.1:{PORT}/orchestrate \\
  -H 'Content-Type: application/json' \\
  -d '{{"flow": "batch-review", "user_id": "test_user_123"}}'"""
CHILDREN_CURL = f"""curl -s -X POST http://127.0.0.1:{PORT}/orchestrate \\
  -H 'Content-Type: application/json' \\
  -d '{{"flow": "score-vacancies", "user_id": "test_user_123"}}'"""
FLOWS = Path(__file__).resolve().parents[2] / "flows"
# What Cloud Storage publishes when an object is written (JSON_API_V1 payload).
OBJECT = "exports/test_user_123.json"
NOTIFICATION_ATTRIBUTES = {
    "notificationConfig": "projects/_/buckets/demo-exports/notificationConfigs/1",
    "eventType": "OBJECT_FINALIZE",
    "payloadFormat": "JSON_API_V1",
    "bucketId": "demo-exports",
    "objectId": OBJECT,
    "objectGeneration": "1",
}
NOTIFICATION_DATA = {
    "kind": "storage#object",
    "bucket": "demo-exports",
    "name": OBJECT,
    "contentType": "application/json",
    "metadata": {"user_id": "test_user_123"},
}


def configure_environment(emulator_host: str | None) -> str:
    """Point the service at the stand-ins; returns the webhook secret."""
    demo = f"http://127.0.0.1:{DEMO_PORT}"
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    values = StandIns().env(demo)
    values |= {
        "FLOWS_DIR": os.pathsep.join(str(folder) for folder in (FLOWS, FLOWS / "examples")),
        "ML_AUTH": "none",
        "WEBHOOK_SECRET": secret,
        "DEFAULT_WEBHOOK_URL": f"{demo}/hook",
        "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
        "PUBLIC_URL": f"http://127.0.0.1:{PORT}",
        "LOG_FORMAT": os.environ.get("LOG_FORMAT", "console"),
    }
    if emulator_host:
        values |= {"PUBSUB_EMULATOR_HOST": emulator_host, "GOOGLE_CLOUD_PROJECT": PROJECT}
    else:
        os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        os.environ.pop("GOOGLE_CLOUD_PROJECT", None)
    os.environ.update(values)
    return secret


async def serve(emulator: Emulator | None) -> None:
    secret = configure_environment(emulator.host if emulator else None)
    settings = Settings.load()
    flows = load_checked_flows(settings)
    if emulator:
        admin = EmulatorAdmin(emulator.host, PROJECT)
        admin.topic(settings.orchestration_topic)
        admin.push_subscription(
            "orchestrator-push",
            settings.orchestration_topic,
            f"http://127.0.0.1:{PORT}/pubsub/push",
        )
        for flow in flows.values():
            for trigger in flow.triggers.values():
                admin.topic(trigger.topic)
                admin.push_subscription(
                    f"trigger-{flow.name}-{trigger.name}",
                    trigger.topic,
                    f"http://127.0.0.1:{PORT}/pubsub/events/{flow.name}/{trigger.name}",
                )
    delay = float(os.environ.get("DEMO_DELAY_MS", "100"))
    vacancies = int(os.environ.get("DEMO_VACANCIES", "3"))
    job_s = float(os.environ.get("DEMO_JOB_S", "14"))  # the example's batch job
    review_s = float(os.environ.get("DEMO_REVIEW_S", "5"))  # and its reviewer
    servers = [
        uvicorn.Server(
            uvicorn.Config(
                StandIns(
                    delay_s=delay / 1000, vacancies=vacancies, job_s=job_s, review_s=review_s
                ).app(WebhookReceiver(secret, echo=True)),
                host="127.0.0.1",
                port=DEMO_PORT,
                log_level="warning",
                access_log=False,
            )
        ),
        uvicorn.Server(
            uvicorn.Config(
                create_app(settings, flows),
                host="127.0.0.1",
                port=PORT,
                access_log=False,
                log_config=None,
            )
        ),
    ]
    running = [asyncio.create_task(server.serve()) for server in servers]
    while not all(server.started for server in servers):
        if any(task.done() for task in running):
            break  # a server could not start (its error is logged); gather reports it
        await asyncio.sleep(0.05)
    else:
        announce(emulator, delay, notification_command(flows, emulator))
    await asyncio.gather(*running)


def notification_command(flows: dict[str, Flow], emulator: Emulator | None) -> str | None:
    """A command delivering a sample Cloud Storage notification to the first trigger: on the
    emulator, published to its topic; in process, pushed to its endpoint as Pub/Sub would."""
    found = next(((f, t) for f in flows.values() for t in f.triggers.values()), None)
    if found is None:
        return None
    flow, trigger = found
    message: dict[str, object] = {
        "data": base64.b64encode(json.dumps(NOTIFICATION_DATA).encode()).decode(),
        "attributes": NOTIFICATION_ATTRIBUTES,
    }
    if emulator:
        topic = EmulatorAdmin(emulator.host, PROJECT).topic_path(trigger.topic)
        url = f"http://{emulator.host}/v1/{topic}:publish"
        body: dict[str, object] = {"messages": [message]}
    else:
        url = f"http://127.0.0.1:{PORT}/pubsub/events/{flow.name}/{trigger.name}"
        body = {"message": message | {"messageId": "demo-1"}, "subscription": "demo"}
    return (
        f"curl -s -X POST {url} \\\n  -H 'Content-Type: application/json' \\\n"
        f"  -d '{json.dumps(body)}'"
    )


def announce(emulator: Emulator | None, delay: float, notification: str | None) -> None:
    transport = f"Pub/Sub emulator at {emulator.host}" if emulator else "in-process transport"
    print(
        f"\nML Orchestrator on http://127.0.0.1:{PORT} ({transport}); stand-in ML functions "
        f"({delay:g} ms each) and webhook receiver on http://127.0.0.1:{DEMO_PORT}.\n"
        f"Dashboard: http://127.0.0.1:{PORT}/ui/  API docs: http://127.0.0.1:{PORT}/docs.\n"
        f"Start a flow:\n\n{CURL}\n\n"
        "Or one that waits for a batch job (~15 s) and a review (~5 s later), suspended "
        f"meanwhile (watch it on the dashboard):\n\n{EXAMPLE_CURL}\n\n"
        "Or one that scores each vacancy in a child execution of its own, two at a time:"
        f"\n\n{CHILDREN_CURL}\n",
        file=sys.stderr,
        flush=True,
    )
    if notification:
        again = "" if emulator else " (the same message id again starts no second execution)"
        print(
            f"Or let a file landing in a bucket start one (a Cloud Storage notification for "
            f"the flow's trigger{again}):\n\n{notification}\n",
            file=sys.stderr,
            flush=True,
        )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so that `finally` stops the emulator on SIGTERM too


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    binary = find_emulator()
    emulator = None
    if binary is None:
        print("Pub/Sub emulator not found: using the in-process transport.", file=sys.stderr)
    else:
        emulator = Emulator.start(binary, EMULATOR_PORT)
    try:
        asyncio.run(serve(emulator))
    except ConfigError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        if emulator:
            with contextlib.suppress(ProcessLookupError):
                emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
