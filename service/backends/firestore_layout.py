"""How an execution is laid out in Firestore: a head document and, for large slots, parts.

One head document per execution, always far under Firestore's 1 MiB:

    executions/{id}
        flow, status, requested_at, started_at,     the summary: what `list` queries
        finished_at, duration_ms, error             and reads (a projection)
        input, steps.NAME, result                   "slots": JSON text of the input, of
                                                    each step's outcome and of the flow's
                                                    result, inline up to INLINE_BYTES,
                                                    else a pointer {parts, digest}
        answers.NAME                                what was posted to a waiting step's
                                                    callback URL (a slot); never written
                                                    by a save, so no run overwrites it
        shadows.STEP                                its shadow calls' outcomes (a slot: the
                                                    step's, its items', by key); likewise
                                                    apart, merged in once a run is over
        webhook_url, traceparent                    kept for re-drives and resumes
        owner, lease_until, delivered,              the lease, and whether the result
        cancel_requested, updated_at, expire_at     went out; an operator's cancel
    executions/{id}/execution-parts/{slot}.{digest}.{n}
                                                    a larger slot in chunks of PART_BYTES,
                                                    named by its content, written before
                                                    the pointer to them (so never torn)
    executions/{id}/execution-ends/{run}~{key}      a child's end (a slot) reported to
        wait, end, expire_at                        its parent's step or item `key`
                                                    (`step`, `step#index`) while the
                                                    parent's wait of run `run` (`wait`:
                                                    "{run}~{step}") runs: beside the head,
                                                    so children ending at once do not
                                                    write the one document
    executions/{id}/execution-ends/{run}~{step}~{n}
        expire_at                                   the mark of the resume sent by the
                                                    end that counted n (created once)
    {collection}-flows/{flow}@{version}             a flow version's definition, kept once
    {collection}-cache/{digest}                     a cached step output (a slot, parts
        output, made_by, expire_at                  under it as above) until expire_at
    {collection}-limits/{key}                       each instance's leased share of a limit
        holders.INSTANCE                            (service/shares.py)

Slots are JSON text, not Firestore maps: a map costs an index entry per leaf (a
400-item answer passes Firestore's 40,000 per document), nests at most 20 deep, and
counts against the 1 MiB with every parallel step's answer. Measured by
bench/storage.py: a 3 MB answer could not be stored before; now it is 4 part
documents and one pointer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from service.bounds import dump_json, parse_json
from service.durations import MAX_WAIT_S
from service.execution import Execution, ExecutionSummary

# Each slot inline up to this; with at most MAX_FLOW_STEPS (50) steps a head stays < 1 MiB.
INLINE_BYTES = 16 * 1024
PART_BYTES = 900_000  # a part document's data, under the 1 MiB document limit
# Parts per commit: Firestore takes 10 MiB a request, its emulator's gRPC server 4 MiB
# (a larger commit is refused with 429 "gRPC message exceeds maximum size").
COMMIT_BYTES = 3_000_000
# Parts outlive the head's last write by the longest wait: an execution may wait that
# long after its parts were written, then be kept EXECUTION_TTL_DAYS more.
PARTS_TTL_MARGIN = timedelta(seconds=MAX_WAIT_S, hours=1)
# A collection group of its own name, for its TTL policy and index exemption (infra/).
PARTS_COLLECTION = "execution-parts"
ENDS_COLLECTION = "execution-ends"  # likewise, children's ends beside their parent's head
FLOWS_SUFFIX = "-flows"  # the flow versions' collection: the executions' name + this
CACHE_SUFFIX = "-cache"  # the step cache's collection
LIMITS_SUFFIX = "-limits"  # the limits' shares, one document per limit key
SUMMARY_FIELDS = tuple(name for name in ExecutionSummary.model_fields if name != "execution_id")
# Everything else a head holds; infra/setup.sh exempts from indexing all but what is queried.
HEAD_FIELDS = (
    *SUMMARY_FIELDS,
    *(
        "input",
        "steps",
        "result",
        "answers",
        "shadows",
        "webhook_url",
        "traceparent",
        "owner",
        "lease_until",
        "delivered",
    ),
    *("cancel_requested", "updated_at", "expire_at"),
)
Parts = dict[str, bytes]


def head(execution: Execution, ttl: timedelta, inline_bytes: int) -> tuple[dict[str, Any], Parts]:
    """The head's fields for the whole execution, and the parts its slots need."""
    fields = summary(execution, ttl)
    fields["webhook_url"] = execution.webhook_url
    fields["traceparent"] = execution.traceparent
    fields["input"], parts = slot("input", to_json(execution.input), inline_bytes)
    fields["steps"] = {}
    for name, result in execution.steps.items():
        text = result.model_dump_json()
        fields["steps"][name], more = slot(f"step.{name}", text, inline_bytes)
        parts |= more
    fields["result"], more = slot("result", to_json(execution.result), inline_bytes)
    return fields, parts | more


def summary(execution: Execution, ttl: timedelta) -> dict[str, Any]:
    """The head's summary fields, with when it was written and when it expires."""
    now = datetime.now(UTC)
    fields = execution.summary().model_dump(exclude={"execution_id"})
    fields["updated_at"] = now
    # A waiting execution is kept its TTL after it is due, not after it was saved.
    fields["expire_at"] = max(now, execution.wake_at or now) + ttl
    return fields


def slot(name: str, text: str, inline_bytes: int = INLINE_BYTES) -> tuple[Any, Parts]:
    """A slot's value in the head (its text, or a pointer) and the parts to write first."""
    data = text.encode()
    if len(data) <= inline_bytes:
        return text, {}
    digest = hashlib.blake2b(data, digest_size=12).hexdigest()
    chunks = range(0, len(data), PART_BYTES)
    parts = {f"{name}.{digest}.{n}": data[at : at + PART_BYTES] for n, at in enumerate(chunks)}
    return {"parts": len(parts), "digest": digest}, parts


def batches(parts: Parts) -> Iterator[list[str]]:
    """Part keys in groups of at most COMMIT_BYTES: one commit each."""
    batch: list[str] = []
    size = 0
    for key, data in parts.items():
        if batch and size + len(data) > COMMIT_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(key)
        size += len(data)
    if batch:
        yield batch


def to_json(value: Any) -> str:
    return dump_json(value).decode()


def from_json(text: str) -> Any:
    return parse_json(text.encode())
