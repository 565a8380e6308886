"""What the Firestore store stands on: the client, each call bounded, the parts of large
slots, and the documents kept beside the executions.

    {collection}-flows/{flow}@{version}    a flow version's definition, created once
    {collection}-cache/{digest}            a cached step answer (a slot) until expire_at
    {collection}-limits/{key}              each instance's leased share of a limit

A limit's lease is a read and a write conditioned on the document's update time, tried
again when another instance wrote in between (LOST_RACE): the emulator queued
transactions on one document for seconds. `emulator_host` (else FIRESTORE_EMULATOR_HOST)
points the client at the emulator. service/backends/firestore.py builds the executions
on it.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions as google_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore

from service.backends.firestore_calls import STORE_TIMEOUT_S, Contended, bounded
from service.backends.firestore_layout import (
    CACHE_SUFFIX,
    FLOWS_SUFFIX,
    INLINE_BYTES,
    LIMITS_SUFFIX,
    PARTS_COLLECTION,
    PARTS_TTL_MARGIN,
    Parts,
    batches,
    from_json,
    slot,
    to_json,
)
from service.backends.firestore_wire import LOST_RACE, Wire, python, write
from service.errors import StoreUnavailable
from service.execution import CachedOutput, now
from service.shares import Ask, Holder, Share, allot

REMEMBERED_PARTS = 1000
LEASE_ATTEMPTS = 10


class FirestoreBase:
    """The client and the documents beside the executions (see the module's docstring)."""

    def __init__(
        self,
        project: str,
        collection: str,
        ttl: timedelta,
        *,
        inline_bytes: int = INLINE_BYTES,
        emulator_host: str | None = None,
        timeout_s: float = STORE_TIMEOUT_S,
    ) -> None:
        if emulator_host:
            self._client = firestore.AsyncClient(
                project=project,
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            )
            # The client takes the emulator's address from the environment only (when it
            # is made); its channel and credentials follow this attribute (base_client.py).
            self._client._emulator_host = emulator_host
        else:
            self._client = firestore.AsyncClient(project=project)
        self._wire = Wire(self._client)  # the hot path's RPCs
        self._timeout_s = timeout_s
        self._collection = self._client.collection(collection)
        self._flows = self._client.collection(collection + FLOWS_SUFFIX)
        self._cache = self._client.collection(collection + CACHE_SUFFIX)
        self._limits = self._client.collection(collection + LIMITS_SUFFIX)
        self._ttl = ttl
        self._inline_bytes = inline_bytes
        # Parts this instance wrote: a document saved again does not write them again.
        self._written: OrderedDict[tuple[str, str], None] = OrderedDict()  # (document, part)

    async def keep_flow(self, name: str, version: str, source: str) -> None:
        reference = self._flows.document(f"{name}@{version}")

        async def create() -> None:
            with contextlib.suppress(google_exceptions.AlreadyExists):
                await reference.create({"flow": name, "version": version, "source": source})

        await self._call(create())

    async def flow_source(self, name: str, version: str) -> str | None:
        snapshot = await self._call(self._flows.document(f"{name}@{version}").get())
        return snapshot.get("source") if snapshot.exists else None

    async def lease_share(self, key: str, instance: str, ask: Ask, lease_s: float) -> Share:
        # A read, then a write conditioned on what was read (no transaction: the emulator
        # queues transactions of one document for seconds); another instance's write in
        # between makes it try again.
        reference = self._limits.document(key)
        for _ in range(LEASE_ATTEMPTS):
            snapshot = await self._call(reference.get())
            stored = ((snapshot.to_dict() or {}) if snapshot.exists else {}).get("holders", {})
            moment = time.time()
            others = {n: _holder(h) for n, h in stored.items() if n != instance}
            granted = allot(ask.total, others, ask.demand, ask.in_use, moment)
            holders = {n: stored[n] for n, h in others.items() if h.expires_at > moment}
            if granted != Share() or not ask.lets_go:
                kept = Holder(ask.demand, ask.kept(granted), moment + lease_s)
                holders[instance] = _stored(kept)
            try:
                if snapshot.exists:
                    option = self._client.write_option(last_update_time=snapshot.update_time)
                    await self._call(reference.update({"holders": holders}, option=option))
                else:
                    await self._call(reference.create({"holders": holders}))
            except StoreUnavailable as exc:
                if isinstance(exc.__cause__, LOST_RACE):
                    continue
                raise
            return granted
        raise Contended(
            f"execution store: limit {key!r} kept changing under {LEASE_ATTEMPTS} leases"
        )

    async def cached(self, key: str) -> CachedOutput | None:
        name = self._wire.path(self._cache.id, key)
        document = await self._call(self._wire.get(name, self._timeout_s))
        if document is None:
            return None
        data = python(document.fields)
        if data["expire_at"] <= now():  # a TTL policy deletes it within a day: not yet, maybe
            return None
        texts = await self._read_slots(self._cache.document(key), {"output": data["output"]})
        return CachedOutput(from_json(texts["output"]), data["made_by"], data["expire_at"])

    async def cache(self, key: str, entry: CachedOutput) -> None:
        reference = self._cache.document(key)
        value, parts = self._slot("output", to_json(entry.output))
        await self._write_parts_of(reference, parts, entry.expires_at - now())
        fields = {"output": value, "made_by": entry.made_by, "expire_at": entry.expires_at}
        kept = write(self._wire.path(self._cache.id, key), fields)
        await self._call(self._wire.write(kept, self._timeout_s))

    async def close(self) -> None:
        await self._wire.close()
        self._client.close()  # type: ignore[no-untyped-call]

    async def _call(self, awaitable: Awaitable[Any]) -> Any:
        return await bounded(awaitable, self._timeout_s)

    def _slot(self, name: str, text: str) -> tuple[Any, Parts]:
        return slot(name, text, self._inline_bytes)

    async def _write_parts_of(self, document: Any, parts: Parts, ttl: timedelta) -> None:
        """Write the parts of `document`'s slots that this instance has not written."""
        todo = {k: data for k, data in parts.items() if (document.path, k) not in self._written}
        if not todo:
            return
        folder = document.collection(PARTS_COLLECTION)
        expire_at = datetime.now(UTC) + ttl + PARTS_TTL_MARGIN
        for batch_keys in batches(todo):
            batch = self._client.batch()
            for key in batch_keys:
                batch.set(folder.document(key), {"data": todo[key], "expire_at": expire_at})
            await self._call(batch.commit())
        for key in todo:
            self._written[(document.path, key)] = None
            if len(self._written) > REMEMBERED_PARTS:
                self._written.popitem(last=False)

    async def _read_slots(self, document: Any, slots: dict[str, Any]) -> dict[str, str]:
        """`slots` (name -> inline text or pointer) as text, the pointed ones read from
        `document`'s parts."""
        pointers = {name: value for name, value in slots.items() if isinstance(value, dict)}
        if not pointers:
            return slots
        folder = document.collection(PARTS_COLLECTION)
        keys = [
            f"{name}.{pointer['digest']}.{n}"
            for name, pointer in pointers.items()
            for n in range(pointer["parts"])
        ]
        read = await self._call(read_all(self._client, [folder.document(k) for k in keys]))
        missing = [key for key in keys if key not in read]
        if missing:
            raise StoreUnavailable(f"execution store: part {missing[0]} is missing")
        texts = dict(slots)
        for name, pointer in pointers.items():
            chunks = (read[f"{name}.{pointer['digest']}.{n}"] for n in range(pointer["parts"]))
            texts[name] = b"".join(chunks).decode()
        return texts


def _holder(stored: dict[str, float]) -> Holder:
    return Holder(
        Share(stored["demand_concurrency"], stored["demand_rate"]),
        Share(stored["concurrency"], stored["rate"]),
        stored["expires_at"],
    )


def _stored(holder: Holder) -> dict[str, float]:
    return {
        "demand_concurrency": holder.demand.concurrency,
        "demand_rate": holder.demand.rate,
        "concurrency": holder.granted.concurrency,
        "rate": holder.granted.rate,
        "expires_at": holder.expires_at,
    }


async def read_all(client: Any, references: list[Any], field: str = "data") -> dict[str, Any]:
    """`field` of each document of `references` that exists, by document id."""
    return {
        snapshot.id: snapshot.get(field)
        async for snapshot in client.get_all(references)
        if snapshot.exists
    }
