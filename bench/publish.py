"""`python -m bench.publish`: CPU per published message, on the real Pub/Sub emulator.

--messages publishes, --concurrency at a time, as the front door makes them, through
google-cloud-pubsub's threaded PublisherClient (the front door's publisher before,
with its 1 ms batch window: the baseline, measured in the same run) and through
service/backends/pubsub.py (the package's asyncio client, batched as a group commit).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from google.cloud.pubsub_v1 import PublisherClient
from google.cloud.pubsub_v1.types import BatchSettings

from service.backends.pubsub import PubSubTransport
from service.dev.emulator import Emulator, EmulatorAdmin, find_emulator

Publish = Callable[[bytes, dict[str, str]], Awaitable[str]]
TOPIC = "bench-requests"


async def measure(publish: Publish, messages: int, at_once: int) -> tuple[float, float]:
    """Microseconds of CPU per message, and messages per second."""
    limit = asyncio.Semaphore(at_once)
    data = b'{"flow": "ml-orchestration", "input": {"user_id": "u", "session_id": "s"}}'

    async def one(n: int) -> None:
        async with limit:
            await publish(data, {"execution_id": str(uuid.uuid4()), "flow": "ml-orchestration"})

    await asyncio.gather(*(one(n) for n in range(200)))  # warm up
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(messages)))
    return (time.process_time() - cpu) / messages * 1e6, messages / (time.perf_counter() - wall)


async def threaded(project: str, messages: int, at_once: int) -> tuple[float, float]:
    client = PublisherClient(batch_settings=BatchSettings(max_latency=0.001))
    path = client.topic_path(project, TOPIC)

    async def publish(data: bytes, attributes: dict[str, str]) -> str:
        return str(await asyncio.wrap_future(client.publish(path, data, **attributes)))

    try:
        return await measure(publish, messages, at_once)
    finally:
        client.stop()


async def in_loop(project: str, messages: int, at_once: int) -> tuple[float, float]:
    transport = PubSubTransport(project, emulator_host=os.environ["PUBSUB_EMULATOR_HOST"])

    async def publish(data: bytes, attributes: dict[str, str]) -> str:
        return await transport.publish(TOPIC, data, attributes)

    try:
        return await measure(publish, messages, at_once)
    finally:
        await transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    binary = find_emulator()
    assert binary is not None, "the Pub/Sub emulator is not installed (gcloud SDK)"
    emulator = Emulator.start(binary, log=Path(tempfile.mkdtemp()) / "pubsub.log")
    try:
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
        project = f"bench-{uuid.uuid4().hex[:8]}"
        EmulatorAdmin(emulator.host, project).topic(TOPIC)
        before = asyncio.run(threaded(project, args.messages, args.concurrency))
        now = asyncio.run(in_loop(project, args.messages, args.concurrency))
    finally:
        emulator.stop()
    print(f"{args.messages} publishes, {args.concurrency} at once, Pub/Sub emulator:")
    print(f"  PublisherClient (threads), before  {before[0]:6.0f} µs CPU  {before[1]:7.0f} msg/s")
    print(f"  PublisherAsyncClient, loop batches {now[0]:6.0f} µs CPU  {now[1]:7.0f} msg/s")
    print(f"  CPU per message {now[0] / before[0]:.2f}x, rate {now[1] / before[1]:.2f}x")


if __name__ == "__main__":
    main()
