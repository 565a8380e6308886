"""Children's ends on Firestore: each its own document beside the parent's head.

Hundreds of children ending at once all reported to one head before: each a read and a
write conditioned on it, all but one lost and tried again (13 writes and 24 reads per
child at 200; some children ran out of redeliveries at 1,000). Now a child's end is
created once under the parent (`execution-ends/{run}~{key}`, the layout in
service/backends/firestore_layout.py): nobody's write waits for another's. Which end
resumes the parent is decided by counting the wait's ends after one's own is stored
(the last end stored sees them all), and of several that count as many, the one that
creates the mark of that count sends the resume. As ends leave the head unwritten, an
instance parses a parent's head once per version for all the ends it records (a
1,000-item step parsed for each end was half of the CPU). The run reads the ends of
the children it waits for when it is claimed and when it suspends (those that ended
while it ran make it resume at once).
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from google.cloud.firestore_v1.base_query import FieldFilter

from service.backends.firestore_base import FirestoreBase, read_all
from service.backends.firestore_layout import (
    ENDS_COLLECTION,
    PARTS_TTL_MARGIN,
    from_json,
)
from service.backends.firestore_wire import LOST_RACE, write
from service.errors import StoreUnavailable
from service.execution import Execution, StepStatus

PARENTS_KEPT = 64  # parents whose head this instance parsed for their children's ends


class FirestoreEnds(FirestoreBase):
    """Children's ends kept beside their parent (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Parents as read for their children's ends, by (id, update time): never changed.
        self._parents: OrderedDict[tuple[str, int, int], Execution] = OrderedDict()

    async def _record_end(self, parent_id: str, key: str, group: str, value: Any) -> bool:
        """Create the end `key` ("{run}~{answer key}") of wait `group` with its slot
        `value` (its parts written); False if it was there already (a redelivery)."""
        fields = {"wait": group, "end": value, "expire_at": self._ends_expire_at()}
        return await self._create(parent_id, key, fields)

    async def _count_ends(self, parent_id: str, group: str) -> int:
        found = self._ends_of(parent_id).where(filter=FieldFilter("wait", "==", group))
        counted = await self._call(found.count().get())
        return int(counted[0][0].value)

    async def _mark_resume(self, parent_id: str, group: str, ends: int) -> bool:
        """Whether this caller is the one to resume the parent for the `ends`th end."""
        return await self._create(
            parent_id, f"{group}~{ends}", {"expire_at": self._ends_expire_at()}
        )

    async def _ends(self, execution: Execution) -> dict[str, Any]:
        """The ends recorded for the children `execution`'s waiting flow steps still wait
        for, by answer key (`step`, `step#index`)."""
        wanted: dict[str, str] = {}  # document id -> answer key
        for name, result in execution.steps.items():
            wait = result.wait
            if result.status != StepStatus.WAITING or wait is None or wait.kind != "flow":
                continue
            if result.items is None:
                keys = [name] if result.child is not None else []
            else:
                keys = [
                    f"{name}#{index}"
                    for index, item in enumerate(result.items)
                    if item.status == StepStatus.RUNNING and item.child is not None
                ]
            wanted |= {f"{wait.run}~{key}": key for key in keys}
        if not wanted:
            return {}
        folder = self._ends_of(execution.execution_id)
        references = [folder.document(document) for document in wanted]
        read = await self._call(read_all(self._client, references, "end"))
        slots = {f"answer.{wanted[document]}": value for document, value in read.items()}
        head = self._collection.document(execution.execution_id)
        texts = await self._read_slots(head, slots)
        return {name.removeprefix("answer."): from_json(text) for name, text in texts.items()}

    async def _create(self, parent_id: str, document: str, fields: dict[str, Any]) -> bool:
        name = self._wire.path(self._collection.id, f"{parent_id}/{ENDS_COLLECTION}/{document}")
        try:
            await self._call(self._wire.write(write(name, fields, exists=False), self._timeout_s))
        except StoreUnavailable as exc:
            if isinstance(exc.__cause__, LOST_RACE):
                return False
            raise
        return True

    def _ends_of(self, parent_id: str) -> Any:
        return self._collection.document(parent_id).collection(ENDS_COLLECTION)

    def _ends_expire_at(self) -> datetime:
        # As the parent's parts: it may wait the longest wait after they are written.
        return datetime.now(UTC) + self._ttl + PARTS_TTL_MARGIN
