"""The execution store shared by every instance: one Firestore document per execution.

A claim is a transaction: it creates the document, or takes over one whose lease
has expired, or reports it running or finished. Step outcomes are written field by
field (`document.steps.NAME`), so parallel steps never overwrite each other.
`expire_at` lets a Firestore TTL policy delete old executions (see infra/).
FIRESTORE_EMULATOR_HOST points the client at the emulator.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions as google_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.field_path import FieldPath

from service.errors import StoreUnavailable
from service.messages import Execution, StepResult
from service.store import Claim, ClaimState, claimed

CLAIM_ATTEMPTS = 10


class FirestoreStore:
    """Executions in a Firestore collection, leased by the instance that runs them."""

    def __init__(self, project: str, collection: str, ttl: timedelta) -> None:
        self._client = firestore.AsyncClient(project=project)
        self._collection = self._client.collection(collection)
        self._ttl = ttl

    async def claim(self, execution: Execution, owner: str, lease_s: float) -> Claim:
        reference = self._collection.document(execution.execution_id)

        @firestore.async_transactional
        async def claim_in(transaction: Any) -> Claim:
            snapshot = await reference.get(transaction=transaction)
            now = datetime.now(UTC)
            lease = {"owner": owner, "lease_until": now + timedelta(seconds=lease_s)}
            if not snapshot.exists:
                transaction.create(reference, {**self._fields(execution, delivered=False), **lease})
                return Claim(ClaimState.CLAIMED, execution)
            data = snapshot.to_dict() or {}
            stored = Execution.model_validate(data["document"])
            if data.get("delivered"):
                return Claim(ClaimState.FINISHED, stored, delivered=True)
            lease_until = data.get("lease_until")
            if lease_until is not None and lease_until > now:
                return Claim(ClaimState.RUNNING)
            transaction.update(reference, lease)
            return claimed(stored)

        try:
            claim: Claim = await claim_in(self._client.transaction(max_attempts=CLAIM_ATTEMPTS))
        except ValueError:
            # Firestore gave up on the transaction: other deliveries are claiming it now.
            return Claim(ClaimState.RUNNING)
        except google_exceptions.GoogleAPIError as exc:
            raise StoreUnavailable(f"execution store: {exc}") from exc
        return claim

    async def renew(self, execution_id: str, owner: str, lease_s: float) -> bool:
        reference = self._collection.document(execution_id)

        @firestore.async_transactional
        async def renew_in(transaction: Any) -> bool:
            snapshot = await reference.get(transaction=transaction)
            if not snapshot.exists or snapshot.get("owner") != owner:
                return False
            lease_until = datetime.now(UTC) + timedelta(seconds=lease_s)
            transaction.update(reference, {"lease_until": lease_until})
            return True

        return await self._call(renew_in(self._client.transaction()))  # type: ignore[no-any-return]

    async def save_step(self, execution_id: str, name: str, result: StepResult) -> None:
        path = FieldPath("document", "steps", name).to_api_repr()
        reference = self._collection.document(execution_id)
        await self._call(reference.update({path: result.model_dump(mode="json")}))

    async def save(self, execution: Execution, delivered: bool = False) -> None:
        fields = self._fields(execution, delivered)
        if delivered:
            fields |= {"owner": None, "lease_until": None}
        await self._call(self._collection.document(execution.execution_id).set(fields, merge=True))

    async def release(self, execution_id: str, owner: str) -> None:
        reference = self._collection.document(execution_id)

        @firestore.async_transactional
        async def release_in(transaction: Any) -> None:
            snapshot = await reference.get(transaction=transaction)
            if snapshot.exists and snapshot.get("owner") == owner:
                transaction.update(reference, {"owner": None, "lease_until": None})

        await self._call(release_in(self._client.transaction()))

    async def get(self, execution_id: str) -> Execution | None:
        snapshot = await self._call(self._collection.document(execution_id).get())
        if not snapshot.exists:
            return None
        return Execution.model_validate(snapshot.get("document"))

    async def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    def _fields(self, execution: Execution, delivered: bool) -> dict[str, Any]:
        now = datetime.now(UTC)
        return {
            "document": execution.model_dump(mode="json"),
            "status": execution.status.value,
            "delivered": delivered,
            "updated_at": now,
            "expire_at": now + self._ttl,
        }

    @staticmethod
    async def _call(awaitable: Any) -> Any:
        try:
            return await awaitable
        except (google_exceptions.GoogleAPIError, ValueError) as exc:  # ValueError: contention
            raise StoreUnavailable(f"execution store: {exc}") from exc
