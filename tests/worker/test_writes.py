"""What an execution writes to the store: outcomes that end together share a write, a
skipped step's and the run's last ride with the next one, and with nowhere to deliver
the run's end is one write. Counted on both stores; on Firestore, documents committed."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from service.backends.firestore import FirestoreStore
from service.backends.store import ExecutionStore
from service.errors import StoreRefused
from service.execution import Execution, ExecutionStatus, StepResult
from service.messages import SEED_PAYLOAD, PushEnvelope
from tests.support.engine import make_caller, make_parts, make_runner
from tests.support.fakes import FaultyStore, RecordingTransport
from tests.support.functions import Functions, HttpxSender, flow_from
from tests.support.project import make_settings, project_flows

FLOWS = project_flows("http://fn")
WEBHOOK = "http://hooks.example/hook"
WITH_EMBEDDINGS = {**SEED_PAYLOAD, "create_user_embedding": True}


class Counted:
    """A store whose writes are counted by method, the outcomes of each `save_steps` kept."""

    def __init__(self, store: ExecutionStore) -> None:
        self.store = store
        self.calls: Counter[str] = Counter()
        self.step_writes: list[list[str]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)
        if name not in {"enqueue", "claim", "save_steps", "save", "suspend", "renew"}:
            return method

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            if name == "save_steps":
                self.step_writes.append(sorted(args[1]))
            return await method(*args, **kwargs)

        return counted


def functions(delays: dict[str, float]) -> httpx.MockTransport:
    async def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "hooks.example":
            return httpx.Response(204)
        await asyncio.sleep(delays.get(request.url.path, 0))
        if request.url.path == "/match-candidato":
            return httpx.Response(200, json={"vacancies": [{"vacancy_id": "v1"}]})
        return httpx.Response(200, json={"ok": True})

    return httpx.MockTransport(answer)


def pushed(
    execution_id: str, flow_input: dict[str, Any], webhook_url: str | None = None
) -> PushEnvelope:
    """The push of the default flow's request message for `execution_id`."""
    message = {
        "execution_id": execution_id,
        "flow": "ml-orchestration",
        "input": flow_input,
        "webhook_url": webhook_url,
    }
    data = base64.b64encode(json.dumps(message).encode()).decode()
    return PushEnvelope.model_validate({"message": {"data": data, "messageId": "m"}})


async def run(
    store: ExecutionStore,
    flow_input: dict[str, Any],
    webhook_url: str | None = None,
    delays: dict[str, float] | None = None,
) -> tuple[Counted, Counter[str]]:
    """One execution from its queued record to its end: the store's writes by method, and
    on Firestore the documents each commit wrote (`documents`)."""
    counted, documents = Counted(store), Counter[str]()
    if isinstance(store, FirestoreStore):
        write = store._wire.write

        async def counting(change: Any, timeout_s: float) -> Any:
            documents["documents"] += 1
            return await write(change, timeout_s)

        store._wire.write = counting  # type: ignore[method-assign]
    execution_id = str(uuid.uuid4())
    queued = Execution(
        execution_id=execution_id,
        flow="ml-orchestration",
        status=ExecutionStatus.QUEUED,
        input=flow_input,
        started_at=None,
    )
    settings = make_settings(webhook_allow_private_networks=True)
    async with httpx.AsyncClient(transport=functions(delays or {})) as http:
        parts = make_parts(settings, FLOWS, RecordingTransport(), counted, http, HttpxSender(http))
        await counted.enqueue(queued)
        assert await parts.push.handle(pushed(execution_id, flow_input, webhook_url)) == 204
    stored = await store.get(execution_id)
    assert stored is not None and stored.status == ExecutionStatus.SUCCEEDED
    return counted, documents


async def test_the_original_request_is_four_writes(store: ExecutionStore) -> None:
    """Queued record, claim, one checkpoint (profession and matching, which end together,
    with the skipped embeddings), and the analyses with the final state."""
    counted, documents = await run(store, SEED_PAYLOAD)
    assert counted.calls == {"enqueue": 1, "claim": 1, "save_steps": 1, "save": 1}
    assert counted.step_writes == [
        ["create_user_embeddings", "match_candidato", "profession_orchestrator"]
    ]
    if isinstance(store, FirestoreStore):
        assert documents["documents"] == 4


async def test_a_webhook_adds_the_write_that_says_it_went_out(store: ExecutionStore) -> None:
    """The result is stored before it goes out (a receiver may read it back), then marked."""
    counted, _ = await run(store, SEED_PAYLOAD, webhook_url=WEBHOOK)
    assert counted.calls["save"] == 2


async def test_steps_that_end_apart_are_written_apart(store: ExecutionStore) -> None:
    """Embeddings end before the steps after them start; profession ends 500 ms after
    matching and its analyses, past the write window, and last: it rides with the end."""
    delays = {"/profession-orchestrator": 0.5}
    counted, _ = await run(store, WITH_EMBEDDINGS, delays=delays)
    assert counted.step_writes == [
        ["create_user_embeddings"],
        ["match_candidato"],
        ["match_analysis_user_vacancy"],
    ]
    assert counted.calls["save"] == 1


async def test_a_wait_s_outcomes_ride_with_the_suspend_and_the_next_write(
    tmp_path: Path,
) -> None:
    """The waiting step is written by the suspend; on resume a sleep's end is decided again
    without a call if lost, and the last step goes with the run's end: no own writes."""
    flow = flow_from(
        tmp_path,
        """
steps:
  first: {call: 'http://fn/first'}
  nap: {after: [first], sleep: 50ms}
  second: {after: [nap], call: 'http://fn/second'}
""",
    )
    written: list[str] = []

    async def checkpoint(name: str, result: StepResult) -> None:
        written.append(name)

    execution = Execution(
        execution_id="e1", flow=flow.name, status=ExecutionStatus.RUNNING, input={}
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(Functions())) as client:
        caller = make_caller(HttpxSender(client))
        runner = make_runner(caller, 30, inline_wait_s=0)
        await runner.run(flow, execution, checkpoint)
        assert execution.status == ExecutionStatus.WAITING
        assert written == ["first"]
        await asyncio.sleep(0.1)  # its wake_at has passed
        execution.status = ExecutionStatus.RUNNING  # claimed again
        await runner.run(flow, execution, checkpoint)
    assert execution.status == ExecutionStatus.SUCCEEDED
    assert written == ["first"]


async def test_with_nowhere_to_deliver_a_refused_result_still_ends_the_execution_failed() -> None:
    """The one write that ends the run is refused for good: the execution is stored
    failed, with the reason, not left running."""
    store = FaultyStore()
    refused = [StoreRefused("execution store: 400 maximum entity size")]
    store.save_fault = lambda execution: refused.pop() if refused else None
    settings = make_settings()
    execution_id = str(uuid.uuid4())
    async with httpx.AsyncClient(transport=functions({})) as http:
        parts = make_parts(settings, FLOWS, RecordingTransport(), store, http, HttpxSender(http))
        assert await parts.push.handle(pushed(execution_id, SEED_PAYLOAD)) == 204
    stored = await store.get(execution_id)
    assert stored is not None and stored.status == ExecutionStatus.FAILED
    assert stored.error is not None and "result not stored" in stored.error
