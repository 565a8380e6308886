"""The execution store's contract, on the in-memory store and on the real Firestore emulator."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from service.messages import Execution, ExecutionStatus, StepResult, StepStatus
from service.store import ClaimState, ExecutionStore, MemoryStore

LEASE_S = 30.0


@pytest.fixture(params=["memory", pytest.param("firestore", marks=pytest.mark.emulator)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ExecutionStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    request.getfixturevalue("firestore_emulator")
    from service.firestore import FirestoreStore

    firestore_store = FirestoreStore(
        f"test-{uuid.uuid4().hex[:8]}", "executions", timedelta(days=7)
    )
    yield firestore_store
    await firestore_store.close()


def new_execution() -> Execution:
    return Execution(
        execution_id=str(uuid.uuid4()), flow="f", status=ExecutionStatus.RUNNING, input={"a": 1}
    )


async def test_one_claim_wins_and_a_second_sees_it_running(store: ExecutionStore) -> None:
    execution = new_execution()
    first = await store.claim(execution, "owner-a", LEASE_S)
    second = await store.claim(execution, "owner-b", LEASE_S)
    assert first.state == ClaimState.CLAIMED
    assert first.execution is not None and first.execution.input == {"a": 1}
    assert second.state == ClaimState.RUNNING


async def test_concurrent_claims_give_exactly_one_winner(store: ExecutionStore) -> None:
    execution = new_execution()
    claims = await asyncio.gather(
        *(store.claim(execution, f"owner-{n}", LEASE_S) for n in range(20))
    )
    states = [claim.state for claim in claims]
    print(
        f"\n20 concurrent claims on {type(store).__name__}: {states.count(ClaimState.CLAIMED)} won"
    )
    assert states.count(ClaimState.CLAIMED) == 1
    assert states.count(ClaimState.RUNNING) == 19


async def test_an_expired_lease_is_taken_over_with_the_stored_steps(store: ExecutionStore) -> None:
    execution = new_execution()
    await store.claim(execution, "crashed", lease_s=0.5)
    done = StepResult(status=StepStatus.SUCCEEDED, attempts=1, output={"v": [1, 2]})
    await store.save_step(execution.execution_id, "step-one", done)
    await asyncio.sleep(0.7)
    resumed = await store.claim(execution, "next", LEASE_S)
    assert resumed.state == ClaimState.CLAIMED
    assert resumed.execution is not None
    assert resumed.execution.steps == {"step-one": done}
    assert not await store.renew(execution.execution_id, "crashed", LEASE_S)
    assert await store.renew(execution.execution_id, "next", LEASE_S)


async def test_a_released_execution_is_claimable_at_once(store: ExecutionStore) -> None:
    execution = new_execution()
    await store.claim(execution, "stopping", LEASE_S)
    await store.release(execution.execution_id, "someone-else")
    assert (await store.claim(execution, "b", LEASE_S)).state == ClaimState.RUNNING
    await store.release(execution.execution_id, "stopping")
    assert (await store.claim(execution, "b", LEASE_S)).state == ClaimState.CLAIMED


async def test_a_finished_execution_is_leased_until_its_result_is_delivered(
    store: ExecutionStore,
) -> None:
    execution = new_execution()
    await store.claim(execution, "a", lease_s=0.5)
    execution.finish(ExecutionStatus.SUCCEEDED)
    await store.save(execution)
    assert (await store.claim(execution, "b", LEASE_S)).state == ClaimState.RUNNING
    await asyncio.sleep(0.7)  # "a" died before delivering: "b" takes over the delivery
    undelivered = await store.claim(execution, "b", LEASE_S)
    assert (undelivered.state, undelivered.delivered) == (ClaimState.FINISHED, False)
    assert undelivered.execution == execution
    await store.save(execution, delivered=True)
    delivered = await store.claim(execution, "b", LEASE_S)
    assert (delivered.state, delivered.delivered) == (ClaimState.FINISHED, True)
    assert await store.get(execution.execution_id) == execution
    assert await store.get("never-seen") is None


async def test_parallel_step_outcomes_are_all_kept(store: ExecutionStore) -> None:
    execution = new_execution()
    await store.claim(execution, "a", LEASE_S)
    results = {f"step-{n}": StepResult(status=StepStatus.SUCCEEDED, output=n) for n in range(10)}
    await asyncio.gather(
        *(store.save_step(execution.execution_id, name, r) for name, r in results.items())
    )
    stored = await store.get(execution.execution_id)
    assert stored is not None and stored.steps == results


@pytest.mark.emulator
async def test_firestore_documents_carry_a_ttl_field(firestore_emulator: object) -> None:
    from service.firestore import FirestoreStore

    store = FirestoreStore(f"test-{uuid.uuid4().hex[:8]}", "executions", timedelta(days=7))
    execution = new_execution()
    await store.claim(execution, "a", LEASE_S)
    snapshot = await store._collection.document(execution.execution_id).get()
    expire_at = snapshot.get("expire_at")
    assert timedelta(days=6) < expire_at - datetime.now(UTC) <= timedelta(days=7)
    await store.close()
