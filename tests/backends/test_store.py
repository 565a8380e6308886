"""The execution store's contract, on the in-memory store and on the real Firestore emulator."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from service.backends.answers import Answer
from service.backends.firestore import FirestoreStore
from service.backends.firestore_layout import HEAD_FIELDS
from service.backends.listing import ExecutionQuery, PageTokenInvalid, sort_key
from service.backends.memory import MemoryStore
from service.backends.store import ClaimState, Conflict, ExecutionStore
from service.callback_tokens import CallbackToken, new_callback_token, read_callback_token
from service.errors import StoreRefused
from service.execution import (
    CachedOutput,
    Execution,
    ExecutionStatus,
    StepResult,
    StepStatus,
    Wait,
)
from tests.support.project import fresh_firestore_store

LEASE_S = 30.0


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
    """The others see it running. Five at once on Firestore: its emulator queues the
    transactions of one document on one lock (~0.27 s each, seconds on a loaded machine:
    twenty passed the store's 10 s bound in CI, and once five did), so this test, about
    who wins and not how fast, gives its client a 30 s bound (the bound itself is
    test_faults.py's); Pub/Sub's duplicates are fewer."""
    count = 20 if isinstance(store, MemoryStore) else 5
    store = fresh_firestore_store_like(store, timeout_s=30)
    await store.claim(new_execution(), "warm-up", LEASE_S)  # a new project's first is slow
    execution = new_execution()
    started = time.monotonic()
    claims = await asyncio.gather(
        *(store.claim(execution, f"owner-{n}", LEASE_S) for n in range(count))
    )
    took = time.monotonic() - started
    states = Counter(claim.state for claim in claims)
    print(f"\n{count} concurrent claims on {type(store).__name__}: {dict(states)} in {took:.2f} s")
    assert states == {ClaimState.CLAIMED: 1, ClaimState.RUNNING: count - 1}
    await store.close()  # the memory store's is nothing; a second client's, its own


async def test_an_expired_lease_is_taken_over_with_the_stored_steps(store: ExecutionStore) -> None:
    execution = new_execution()
    await store.claim(execution, "crashed", lease_s=0.5)
    done = StepResult(status=StepStatus.SUCCEEDED, attempts=1, output={"v": [1, 2]})
    await store.save_steps(execution.execution_id, {"step-one": done})
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
    await store.claim(execution, "a", lease_s=1.5)
    execution.finish(ExecutionStatus.SUCCEEDED)
    await store.save(execution)
    assert (await store.claim(execution, "b", LEASE_S)).state == ClaimState.RUNNING
    await asyncio.sleep(1.7)  # "a" died before delivering: "b" takes over the delivery
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
        *(store.save_steps(execution.execution_id, {name: r}) for name, r in results.items())
    )
    stored = await store.get(execution.execution_id)
    assert stored is not None and stored.steps == results


@pytest.mark.emulator
async def test_firestore_documents_carry_a_ttl_field(firestore_emulator: object) -> None:
    store = fresh_firestore_store()
    execution = new_execution()
    await store.claim(execution, "a", LEASE_S)
    snapshot = await store._collection.document(execution.execution_id).get()
    expire_at = snapshot.get("expire_at")
    assert timedelta(days=6) < expire_at - datetime.now(UTC) <= timedelta(days=7)
    await store.close()


@pytest.mark.emulator
async def test_a_firestore_head_holds_only_the_fields_setup_knows(
    firestore_emulator: object,
) -> None:
    """infra/setup.sh exempts HEAD_FIELDS from indexing: a new field must be decided there."""
    store = fresh_firestore_store()
    execution = new_execution()
    await store.claim(execution, "a", LEASE_S)
    await store.save_steps(execution.execution_id, {"a": step_with({"x": 1})})
    await store.cancel(execution.execution_id)
    execution.finish(ExecutionStatus.CANCELLED)
    await store.save(execution, delivered=True)
    snapshot = await store._collection.document(execution.execution_id).get()
    assert set(snapshot.to_dict() or {}) <= set(HEAD_FIELDS)
    assert {"cancel_requested", "updated_at", "expire_at", "result"} <= set(
        snapshot.to_dict() or {}
    )
    await store.close()


def step_with(output: object) -> StepResult:
    return StepResult(status=StepStatus.SUCCEEDED, attempts=1, duration_ms=5, output=output)


async def test_outputs_of_any_allowed_size_are_stored_and_resumed_whole(
    store: ExecutionStore,
) -> None:
    """A 3 MB answer, a 400-item answer and a 1 MB input come back byte for byte."""
    execution = Execution(
        execution_id=str(uuid.uuid4()),
        flow="f",
        status=ExecutionStatus.RUNNING,
        input={"user_id": "u", "notes": "é" * 500_000},  # 1 MB of UTF-8
    )
    large = step_with({"blob": "x" * 3_000_000})
    wide = step_with([{"vacancy_id": f"v{n}", "analysis": "y" * 4000} for n in range(400)])
    small = step_with({"ok": True})
    await store.claim(execution, "crashed", lease_s=0.5)
    await asyncio.gather(
        store.save_steps(execution.execution_id, {"large": large}),
        store.save_steps(execution.execution_id, {"wide": wide}),
        store.save_steps(execution.execution_id, {"small": small}),
    )
    await asyncio.sleep(0.7)
    resumed = await store.claim(execution, "next", LEASE_S)
    assert resumed.state == ClaimState.CLAIMED and resumed.execution is not None
    assert resumed.execution.input == execution.input
    assert resumed.execution.steps == {"large": large, "wide": wide, "small": small}
    execution.steps = resumed.execution.steps
    execution.finish(ExecutionStatus.SUCCEEDED)
    await store.save(execution, delivered=True)
    assert await store.get(execution.execution_id) == execution


@pytest.mark.emulator
async def test_writes_of_one_moment_past_a_request_s_size_go_in_several(
    firestore_emulator: object,
) -> None:
    """Six 800 KB heads written at once: 4.8 MB, past what one BatchWrite request may carry
    (the emulator's gRPC server takes 4 MiB): every one is stored whole."""
    project = f"test-{uuid.uuid4().hex[:8]}"
    store = FirestoreStore(project, "executions", timedelta(days=7), inline_bytes=900_000)
    executions = [
        new_execution().model_copy(
            update={"status": ExecutionStatus.QUEUED, "input": {"notes": f"{n}" * 800_000}}
        )
        for n in range(6)
    ]
    try:
        assert await asyncio.gather(*(store.enqueue(e) for e in executions)) == [True] * 6
        for execution in executions:
            assert await store.get(execution.execution_id) == execution
    finally:
        await store.close()


async def test_a_queued_execution_is_readable_and_replaced_by_its_first_claim(
    store: ExecutionStore,
) -> None:
    execution = new_execution()
    queued = execution.model_copy(update={"status": ExecutionStatus.QUEUED, "started_at": None})
    await store.enqueue(queued)
    assert await store.get(execution.execution_id) == queued
    claim = await store.claim(execution, "a", LEASE_S)
    assert claim.state == ClaimState.CLAIMED
    assert claim.execution is not None and claim.execution.status == ExecutionStatus.RUNNING
    assert (await store.claim(execution, "b", LEASE_S)).state == ClaimState.RUNNING


async def test_a_late_queued_record_never_overwrites_a_started_copy(store: ExecutionStore) -> None:
    execution = new_execution()
    await store.claim(execution, "a", LEASE_S)
    late = execution.model_copy(update={"status": ExecutionStatus.QUEUED})
    assert await store.enqueue(late) is False
    await store.unqueue(execution.execution_id)  # a claimed execution is kept
    stored = await store.get(execution.execution_id)
    assert stored is not None and stored.status == ExecutionStatus.RUNNING
    assert (await store.claim(execution, "b", LEASE_S)).state == ClaimState.RUNNING


async def test_a_queued_record_taken_back_is_gone_and_may_be_made_again(
    store: ExecutionStore,
) -> None:
    execution = new_execution()
    queued = execution.model_copy(update={"status": ExecutionStatus.QUEUED, "started_at": None})
    assert await store.enqueue(queued) is True
    await store.unqueue(execution.execution_id)
    assert await store.get(execution.execution_id) is None
    assert await store.enqueue(queued) is True  # a retried request
    assert await store.get(execution.execution_id) == queued


async def listed(store: ExecutionStore, query: ExecutionQuery) -> list[str]:
    """Every id the listing gives, page after page."""
    ids: list[str] = []
    token = None
    while True:
        page = await store.list(replace(query, page_token=token))
        assert len(page.executions) <= query.limit
        ids += [summary.execution_id for summary in page.executions]
        token = page.next_page_token
        if token is None:
            return ids


async def test_listing_filters_by_status_flow_and_time_newest_first(
    store: ExecutionStore,
) -> None:
    flow = f"flow-{uuid.uuid4().hex[:6]}"
    start = datetime(2026, 11, 26, 10, tzinfo=UTC)
    made = []
    for n in range(12):
        execution = Execution(
            execution_id=f"{flow}-{n:02}",
            flow=flow if n % 4 else "other",
            status=[ExecutionStatus.FAILED, ExecutionStatus.SUCCEEDED, ExecutionStatus.PARTIAL][
                n % 3
            ],
            input={"n": n},
            requested_at=start + timedelta(minutes=n),
        )
        execution.steps["s"] = step_with({"big": "z" * 100})
        made.append(execution)
    await asyncio.gather(*(store.save(execution, delivered=True) for execution in made))

    page = await store.list(ExecutionQuery(flow=flow, limit=3))
    assert [s.execution_id for s in page.executions] == [f"{flow}-11", f"{flow}-10", f"{flow}-09"]
    assert page.executions[0].model_dump() == made[11].summary().model_dump()
    failed_or_partial = await listed(
        store,
        ExecutionQuery(
            statuses={ExecutionStatus.FAILED, ExecutionStatus.PARTIAL},
            flow=flow,
            since=start + timedelta(minutes=2),
            until=start + timedelta(minutes=11),
            limit=2,
        ),
    )
    expected = [
        e.execution_id
        for e in reversed(made)
        if e.flow == flow
        and e.status != ExecutionStatus.SUCCEEDED
        and start + timedelta(minutes=2) <= e.requested_at < start + timedelta(minutes=11)
    ]
    assert failed_or_partial == expected == [f"{flow}-{n:02}" for n in (9, 6, 5, 3, 2)]


async def test_pages_neither_overlap_nor_skip_under_concurrent_inserts(
    store: ExecutionStore,
) -> None:
    flow = f"flow-{uuid.uuid4().hex[:6]}"
    start = datetime(2026, 11, 26, 10, tzinfo=UTC)

    def made(n: int) -> Execution:
        return Execution(
            execution_id=f"{flow}-{n:03}",
            flow=flow,
            status=ExecutionStatus.FAILED,
            input={},
            # Pairs share a time: the id breaks the tie.
            requested_at=start + timedelta(seconds=n // 2),
        )

    before = [made(n) for n in range(30)]
    await asyncio.gather(*(store.save(e, delivered=True) for e in before))
    ids: list[str] = []
    token = None
    n = 30
    while True:
        page = await store.list(ExecutionQuery(flow=flow, limit=4, page_token=token))
        ids += [summary.execution_id for summary in page.executions]
        # Newer executions arrive between pages: they belong before the first page.
        await asyncio.gather(*(store.save(made(n + k), delivered=True) for k in range(3)))
        n += 3
        token = page.next_page_token
        if token is None:
            break
    assert len(ids) == len(set(ids))
    assert ids == [e.execution_id for e in sorted(before, key=sort_key, reverse=True)]


@pytest.mark.parametrize("token", ["not-a-token", "MjAyNi0wMS0wMXx4", "%%%", "="])
async def test_a_forged_page_token_is_refused(store: ExecutionStore, token: str) -> None:
    """Garbage, or a time without a zone ("2026-01-01|x"): each is refused."""
    with pytest.raises(PageTokenInvalid):
        await store.list(ExecutionQuery(page_token=token))


@pytest.mark.emulator
async def test_a_write_firestore_refuses_fails_with_store_refused(
    firestore_emulator: object,
) -> None:
    """Real refusal from the emulator: the 1 MiB document limit, with nothing spilled."""
    store = FirestoreStore(
        f"test-{uuid.uuid4().hex[:8]}", "executions", timedelta(days=7), inline_bytes=10**8
    )
    execution = new_execution()
    await store.claim(execution, "a", LEASE_S)
    with pytest.raises(StoreRefused, match="execution store"):
        await store.save_steps(execution.execution_id, {"big": step_with("x" * 1_100_000)})
    await store.close()


@pytest.mark.emulator
async def test_firestore_heads_stay_small_whatever_the_outputs(firestore_emulator: object) -> None:
    store = fresh_firestore_store()
    execution = new_execution()
    await store.claim(execution, "a", LEASE_S)
    for n in range(10):
        await store.save_steps(execution.execution_id, {f"s{n}": step_with("x" * 900_000)})
    snapshot = await store._collection.document(execution.execution_id).get()
    head = len(json.dumps(snapshot.to_dict(), default=str))
    print(f"\nhead document with 10 outputs of 900 KB: {head} bytes")
    assert head < 16_384
    await store.close()


@pytest.mark.emulator
async def test_firestore_reads_and_resumes_documents_of_the_earlier_layout(
    firestore_emulator: object,
) -> None:
    """Executions stored by the previous release (one `document` map) outlive a deploy."""
    store = fresh_firestore_store()
    execution = new_execution()
    execution.steps["first"] = step_with({"v": 1})
    await store._collection.document(execution.execution_id).set(
        {
            "document": execution.model_dump(mode="json"),
            "status": "running",
            "delivered": False,
            "owner": "old-release",
            "lease_until": datetime.now(UTC) - timedelta(seconds=1),
        }
    )
    assert await store.get(execution.execution_id) == execution
    resumed = await store.claim(execution, "new-release", LEASE_S)
    assert resumed.state == ClaimState.CLAIMED
    assert resumed.execution is not None and resumed.execution.steps == execution.steps
    await store.close()


async def test_cancel_ends_a_queued_execution_and_flags_a_running_one(
    store: ExecutionStore,
) -> None:
    queued = new_execution().model_copy(
        update={"status": ExecutionStatus.QUEUED, "started_at": None}
    )
    await store.enqueue(queued)
    assert await store.cancel(queued.execution_id) == ExecutionStatus.QUEUED
    ended = await store.get(queued.execution_id)
    assert ended is not None and ended.status == ExecutionStatus.CANCELLED
    # Its message arrives later: the claim hands over the result to deliver.
    claim = await store.claim(queued, "a", LEASE_S)
    assert (claim.state, claim.delivered) == (ClaimState.FINISHED, False)

    running = new_execution()
    await store.claim(running, "a", LEASE_S)
    assert running.execution_id not in await store.cancel_requests()
    assert await store.cancel(running.execution_id) == ExecutionStatus.RUNNING
    assert running.execution_id in await store.cancel_requests()
    with pytest.raises(Conflict):
        await store.cancel(queued.execution_id)
    assert await store.cancel("never-seen") is None


async def test_a_crashed_run_with_a_cancel_asked_is_claimed_with_the_cancel(
    store: ExecutionStore,
) -> None:
    execution = new_execution()
    await store.claim(execution, "crashed", lease_s=0.3)
    await store.cancel(execution.execution_id)
    await asyncio.sleep(0.5)
    claim = await store.claim(execution, "next", LEASE_S)
    assert claim.state == ClaimState.CLAIMED and claim.cancel_requested


async def test_a_cancel_asked_between_checkpoints_wins_when_the_run_is_saved(
    store: ExecutionStore,
) -> None:
    """On Firestore the holder's writes are conditioned on its own last one: the cancel's
    write in between makes the next ones read it, and the save ends the run cancelled."""
    execution = new_execution()
    await store.claim(execution, "a", LEASE_S)
    done = StepResult(status=StepStatus.SUCCEEDED, attempts=1)
    await store.save_steps(execution.execution_id, {"one": done})
    assert await store.cancel(execution.execution_id) == ExecutionStatus.RUNNING
    await store.save_steps(execution.execution_id, {"two": done})
    assert await store.renew(execution.execution_id, "a", LEASE_S)
    execution.steps = {"one": done, "two": done}
    execution.finish(ExecutionStatus.SUCCEEDED)
    await store.save(execution)
    stored = await store.get(execution.execution_id)
    assert stored is not None and stored.status == ExecutionStatus.CANCELLED
    assert stored.steps == {"one": done, "two": done}


async def test_redrive_queues_the_next_run_keeping_what_succeeded(store: ExecutionStore) -> None:
    execution = new_execution()
    await store.claim(execution, "a", LEASE_S)
    execution.steps = {
        "kept": step_with({"big": "k" * 50_000}),
        "failed": StepResult(status=StepStatus.FAILED, error="HTTP 400"),
        "skipped": StepResult(status=StepStatus.SKIPPED, error="needs failed step failed"),
    }
    execution.webhook_url = "https://hooks.example/h"
    execution.finish(ExecutionStatus.FAILED, "step failed failed: HTTP 400")
    await store.save(execution)
    with pytest.raises(Conflict, match="still being delivered"):
        await store.redrive(execution.execution_id)
    await store.save(execution, delivered=True)
    changed = await store.redrive(execution.execution_id)
    assert changed is not None
    before, after = changed
    assert before == execution
    assert (after.status, after.run, list(after.steps)) == (ExecutionStatus.QUEUED, 2, ["kept"])
    stored = await store.get(execution.execution_id)
    assert stored == after and stored.webhook_url == "https://hooks.example/h"
    with pytest.raises(Conflict):
        await store.redrive(execution.execution_id)
    claim = await store.claim(execution, "b", LEASE_S)
    assert claim.state == ClaimState.CLAIMED and claim.execution is not None
    assert claim.execution.run == 2 and claim.execution.status == ExecutionStatus.RUNNING
    assert claim.execution.steps == {"kept": execution.steps["kept"]}
    assert await store.redrive("never-seen") is None


async def test_the_memory_store_forgets_the_oldest_ended_or_queued_never_a_running_one() -> None:
    """Past its capacity it stays bounded, even when only queued executions arrive."""
    store = MemoryStore(capacity=3)
    running = new_execution()
    await store.claim(running, "owner", LEASE_S)
    queued = []
    for _ in range(5):  # a front door whose messages are not delivered yet
        execution = new_execution().model_copy(update={"status": ExecutionStatus.QUEUED})
        await store.enqueue(execution)
        queued.append(execution.execution_id)
    assert await store.get(running.execution_id) is not None
    kept = [await store.get(execution_id) for execution_id in queued]
    assert [execution is not None for execution in kept] == [False, False, False, True, True]
    ended = new_execution().model_copy(update={"status": ExecutionStatus.SUCCEEDED})
    await store.save(ended, delivered=True)
    assert await store.get(queued[3]) is None and await store.get(ended.execution_id) is not None


def waiting_execution(wake_in_s: float, digest: str | None = None) -> Execution:
    """A run that ended waiting: its `wait` step is a sleep, or a callback with `digest`."""
    execution = new_execution()
    return waiting(execution, wake_in_s, digest)


def waiting_on_callback() -> tuple[Execution, CallbackToken]:
    """A run waiting for its `wait` step's callback, and the token that answers it."""
    execution = new_execution()
    token, digest = new_callback_token(execution.execution_id, "wait", 1)
    named = read_callback_token(token)
    assert named is not None
    return waiting(execution, 3600, digest), named


def waiting(execution: Execution, wake_in_s: float, digest: str | None) -> Execution:
    wake_at = datetime.now(UTC) + timedelta(seconds=wake_in_s)
    kind = "sleep" if digest is None else "callback"
    wait = Wait(kind=kind, timeout_at=wake_at, callback_sha256=digest)
    execution.steps["wait"] = StepResult(status=StepStatus.WAITING, wake_at=wake_at, wait=wait)
    execution.flow_version = "v1"
    execution.suspend()
    return execution


async def suspended(store: ExecutionStore, execution: Execution) -> None:
    await store.claim(execution, "runner", LEASE_S)
    await store.suspend(execution)


async def test_a_suspended_execution_holds_no_lease_and_resumes_on_a_claim(
    store: ExecutionStore,
) -> None:
    execution = waiting_execution(wake_in_s=3600)
    await suspended(store, execution)
    stored = await store.get(execution.execution_id)
    assert stored is not None and stored.status == ExecutionStatus.WAITING
    assert stored.wake_at == execution.wake_at and stored.steps == execution.steps
    page = await store.list(ExecutionQuery(statuses=[ExecutionStatus.WAITING]))
    assert [s.execution_id for s in page.executions] == [execution.execution_id]
    resumed = await store.claim(execution, "next", LEASE_S)
    assert resumed.state == ClaimState.CLAIMED and resumed.execution is not None
    assert resumed.execution.status == ExecutionStatus.RUNNING
    assert resumed.execution.steps == execution.steps
    assert resumed.execution.flow_version == "v1"


async def test_each_due_execution_is_handed_to_one_waker(store: ExecutionStore) -> None:
    """Several wakers at once (on Firestore, two clients: two instances) share the due
    executions without overlap; one not due stays; a woken one is not due again at once."""
    due = [waiting_execution(wake_in_s=-1) for _ in range(12)]
    later = waiting_execution(wake_in_s=3600)
    for execution in [*due, later]:
        await suspended(store, execution)
    other = fresh_firestore_store_like(store)
    batches = await asyncio.gather(store.due(5), other.due(5), store.due(5), other.due(5))
    ids = [execution.execution_id for batch in batches for execution in batch]
    assert len(ids) == len(set(ids))  # never one execution to two wakers
    rest = await store.due(100)
    woken = set(ids) | {execution.execution_id for execution in rest}
    assert woken == {execution.execution_id for execution in due}
    assert await store.due(100) == []
    print(f"\n4 wakers at once on {type(store).__name__}: {[len(b) for b in batches]}")
    if other is not store:
        await other.close()


def fresh_firestore_store_like(store: ExecutionStore, timeout_s: float = 10) -> ExecutionStore:
    """A second client on the same Firestore project and collection (the memory store: itself)."""
    if not isinstance(store, FirestoreStore):
        return store
    project = store._client.project
    return FirestoreStore(project, store._collection.id, timedelta(days=7), timeout_s=timeout_s)


async def test_a_callback_is_accepted_once(store: ExecutionStore) -> None:
    execution, named = waiting_on_callback()
    await suspended(store, execution)
    answers = await asyncio.gather(*(store.answer(named, {"n": n}) for n in range(3)))
    verdicts = Counter(verdict for verdict, _ in answers)
    assert verdicts == {Answer.ACCEPTED: 1, Answer.ANSWERED: 2}
    stored = await store.get(execution.execution_id)
    assert stored is not None and list(stored.callbacks) == ["wait"]
    forged = replace(named, secret_sha256="0" * 64)
    assert (await store.answer(forged, {}))[0] == Answer.UNKNOWN
    assert (await store.answer(replace(named, execution_id="nobody"), {}))[0] == Answer.UNKNOWN
    resumed = await store.claim(execution, "next", LEASE_S)
    assert resumed.execution is not None and resumed.execution.callbacks["wait"] in (
        {"n": 0},
        {"n": 1},
        {"n": 2},
    )


async def test_a_large_callback_answer_is_stored_whole(store: ExecutionStore) -> None:
    execution, named = waiting_on_callback()
    await suspended(store, execution)
    body = {"blob": "z" * 3_000_000}
    assert (await store.answer(named, body))[0] == Answer.ACCEPTED
    stored = await store.get(execution.execution_id)
    assert stored is not None and stored.callbacks == {"wait": body}


async def test_a_cancelled_waiting_execution_is_flagged_and_its_callback_gone(
    store: ExecutionStore,
) -> None:
    execution, named = waiting_on_callback()
    await suspended(store, execution)
    assert await store.cancel(execution.execution_id) == ExecutionStatus.WAITING
    assert (await store.answer(named, {}))[0] == Answer.GONE
    claim = await store.claim(execution, "next", LEASE_S)
    assert claim.state == ClaimState.CLAIMED and claim.cancel_requested


async def test_flow_versions_are_kept_once_and_counted_in_use(store: ExecutionStore) -> None:
    await store.keep_flow("f", "v1", '{"steps": 1}')
    await store.keep_flow("f", "v1", '{"steps": "changed"}')  # kept once: the first stays
    assert await store.flow_source("f", "v1") == '{"steps": 1}'
    assert await store.flow_source("f", "v2") is None
    for version in ("v1", "v1", "v2"):
        execution = waiting_execution(wake_in_s=3600)
        execution.flow_version = version
        await suspended(store, execution)
    ended = new_execution()
    ended.flow_version = "v0"
    await store.claim(ended, "a", LEASE_S)
    ended.finish(ExecutionStatus.SUCCEEDED)
    await store.save(ended, delivered=True)
    assert await store.versions_in_use("f") == {"v1": 2, "v2": 1}


async def test_a_cached_output_of_any_size_is_read_back_until_it_expires(
    store: ExecutionStore,
) -> None:
    large = CachedOutput({"blob": "c" * 3_000_000}, "maker-1", datetime.now(UTC) + timedelta(1))
    await store.cache("key-large", large)
    assert await store.cached("key-large") == large
    soon = datetime.now(UTC) + timedelta(seconds=1)
    small = CachedOutput({"embedding": [0.1, 0.2]}, "maker-2", soon)
    await store.cache("key-small", small)
    assert await store.cached("key-small") == small
    assert await store.cached("key-none") is None
    await asyncio.sleep((soon - datetime.now(UTC)).total_seconds() + 0.1)
    assert await store.cached("key-small") is None  # expired: whatever the TTL policy did yet
    replaced = CachedOutput({"embedding": [0.3]}, "maker-3", soon + timedelta(hours=1))
    await store.cache("key-small", replaced)
    assert await store.cached("key-small") == replaced
