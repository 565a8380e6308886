"""The official Pub/Sub and Firestore emulators: find them, start them with a capped heap,
stop them, provision Pub/Sub.

The Pub/Sub emulator forgets every topic and subscription when it restarts, so
whoever starts it provisions it (over its REST API, which needs no credentials).
"""

from __future__ import annotations

import base64
import functools
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

HEAP = "-Xmx512m"
RELATIVE_BINARY = Path("platform/pubsub-emulator/bin/cloud-pubsub-emulator")
RELATIVE_FIRESTORE_JAR = Path("platform/cloud-firestore-emulator/cloud-firestore-emulator.jar")
FIRESTORE_MAIN = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"
KNOWN_SDK_ROOTS = (
    "/usr/lib/google-cloud-sdk",
    "/usr/share/google-cloud-sdk",
    "/opt/google-cloud-sdk",
)
MAX_ACK_DEADLINE_S = 600


def find_emulator() -> Path | None:
    """The Pub/Sub emulator's launcher: $PUBSUB_EMULATOR_BIN, the gcloud SDK's, or None."""
    explicit = os.environ.get("PUBSUB_EMULATOR_BIN")
    if explicit:
        return Path(explicit) if Path(explicit).is_file() else None
    return _in_sdk(RELATIVE_BINARY)


def find_firestore_emulator() -> Path | None:
    """The Firestore emulator's jar: $FIRESTORE_EMULATOR_JAR, the gcloud SDK's, or None."""
    explicit = os.environ.get("FIRESTORE_EMULATOR_JAR")
    if explicit:
        return Path(explicit) if Path(explicit).is_file() else None
    if shutil.which("java") is None:
        return None
    return _in_sdk(RELATIVE_FIRESTORE_JAR)


def _in_sdk(relative: Path) -> Path | None:
    for root in _sdk_roots():
        if (Path(root) / relative).is_file():
            return Path(root) / relative
    return None


@functools.cache
def _sdk_roots() -> list[str]:
    roots = list(KNOWN_SDK_ROOTS)
    gcloud = shutil.which("gcloud")
    if gcloud:
        try:
            printed = subprocess.run(  # noqa: S603 - our own fixed arguments
                [gcloud, "info", "--format=value(installation.sdk_root)"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            printed = ""
        if printed:
            roots.insert(0, printed)
    return roots


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Emulator:
    """A running emulator process (in its own process group, so it can be stopped whole)."""

    host: str
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, binary: Path, port: int | None = None, log: Path | None = None) -> Emulator:
        """The Pub/Sub emulator, from its SDK launcher."""
        port = port or free_port()
        command = [str(binary), "--host=127.0.0.1", f"--port={port}"]
        java_opts = f"{os.environ.get('JAVA_OPTS', '')} {HEAP}".strip()
        return cls._launch(command, port, log, {"JAVA_OPTS": java_opts})

    @classmethod
    def start_firestore(
        cls, jar: Path, port: int | None = None, log: Path | None = None
    ) -> Emulator:
        """The Firestore emulator, from its jar (the SDK's launcher takes no heap option)."""
        port = port or free_port()
        command = ["java", HEAP, "-Duser.language=en", "-cp", str(jar), FIRESTORE_MAIN, "start"]
        return cls._launch([*command, "--host=127.0.0.1", f"--port={port}"], port, log, {})

    @classmethod
    def _launch(
        cls, command: list[str], port: int, log: Path | None, env: dict[str, str]
    ) -> Emulator:
        with open(log or os.devnull, "wb") as output:  # the child keeps its own descriptor
            process = subprocess.Popen(  # noqa: S603 - the SDK's emulator, our arguments
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,
            )
        emulator = cls(host=f"127.0.0.1:{port}", process=process)
        emulator._wait_until_up(timeout=60)
        return emulator

    def _wait_until_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Pub/Sub emulator exited with {self.process.returncode}")
            try:
                httpx.get(f"http://{self.host}/", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the Pub/Sub emulator did not answer on {self.host} in {timeout} s")

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class EmulatorAdmin:
    """Topics and subscriptions of one project on the emulator, over REST. Idempotent.
    A topic is named alone (of this project) or whole (projects/P/topics/T, of any)."""

    def __init__(self, host: str, project: str) -> None:
        self.base = f"http://{host}/v1/projects/{project}"
        self.host = host
        self.project = project

    def topic(self, name: str) -> None:
        self._put(self.topic_path(name), {})

    def push_subscription(self, name: str, topic: str, endpoint: str) -> None:
        self._put(
            f"projects/{self.project}/subscriptions/{name}",
            {
                "topic": self.topic_path(topic),
                "pushConfig": {"pushEndpoint": endpoint},
                "ackDeadlineSeconds": MAX_ACK_DEADLINE_S,
            },
        )

    def topic_path(self, topic: str) -> str:
        return topic if topic.startswith("projects/") else f"projects/{self.project}/topics/{topic}"

    def pull_subscription(self, name: str, topic: str) -> None:
        self._put(
            f"projects/{self.project}/subscriptions/{name}",
            {"topic": self.topic_path(topic), "ackDeadlineSeconds": 60},
        )

    def publish(self, topic: str, data: bytes, attributes: dict[str, str] | None = None) -> str:
        """Publish one message, as any producer may; returns its message id."""
        message = {"data": base64.b64encode(data).decode(), "attributes": attributes or {}}
        response = httpx.post(
            f"http://{self.host}/v1/{self.topic_path(topic)}:publish",
            json={"messages": [message]},
            timeout=10,
        )
        response.raise_for_status()
        message_id: str = response.json()["messageIds"][0]
        return message_id

    def pull(self, subscription: str, max_messages: int = 100) -> list[dict[str, object]]:
        """Pull and acknowledge what is there now."""
        response = httpx.post(
            f"{self.base}/subscriptions/{subscription}:pull",
            json={"maxMessages": max_messages, "returnImmediately": True},
            timeout=10,
        )
        response.raise_for_status()
        received = response.json().get("receivedMessages", [])
        if received:
            httpx.post(
                f"{self.base}/subscriptions/{subscription}:acknowledge",
                json={"ackIds": [item["ackId"] for item in received]},
                timeout=10,
            ).raise_for_status()
        return [item["message"] for item in received]

    def _put(self, path: str, body: dict[str, object]) -> None:
        response = httpx.put(f"http://{self.host}/v1/{path}", json=body, timeout=10)
        if response.status_code != 409:  # 409: it exists already
            response.raise_for_status()
