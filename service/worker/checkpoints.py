"""A run's step outcomes on their way to the store, several in one write.

The runner hands over each outcome that needs a write of its own (the others, by
service/engine/progress.py's `rides_along`, wait for the next write, or for the save
or suspend that ends the run). An outcome waits up to `window_s` for others to end
with it, then goes in one commit with every ended outcome not yet written; one commit
is in flight at a time, and what ends meanwhile goes in the next. Each caller awaits
the commit that carries its outcome, and hears its error; a commit the store refuses
for good (StoreRefused) is tried again an outcome at a time, so that only the outcome
refused fails its step.
"""

from __future__ import annotations

import asyncio

from service.backends.store import RunStore
from service.engine.progress import ENDED
from service.errors import StoreRefused
from service.execution import Execution, StepResult, StepStatus


class Checkpoints:
    """The checkpoints of one run of `execution` (the runner's `checkpoint`)."""

    def __init__(self, store: RunStore, execution: Execution, window_s: float) -> None:
        self._store = store
        self._execution = execution
        self._window_s = window_s
        self._asked: dict[str, StepResult] = {}  # handed over, for the next commit
        self._written: dict[str, tuple[int, StepStatus]] = {}  # each step's outcome, as written
        # The commit that outcomes join now; it answers with those the store refused.
        self._next: asyncio.Future[dict[str, StoreRefused]] | None = None
        self._committing: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def __call__(self, name: str, result: StepResult) -> None:
        self._asked[name] = result
        if self._next is None:
            loop = asyncio.get_running_loop()
            commit = self._next = loop.create_future()
            self._timer = loop.call_later(self._window_s, self._start, commit)
        refused = await asyncio.shield(self._next)
        if name in refused:
            raise refused[name]

    def close(self) -> None:
        """The run is over: what was not written yet goes with its save."""
        if self._timer is not None:
            self._timer.cancel()
        if self._next is not None:
            self._next.cancel()

    def _start(self, commit: asyncio.Future[dict[str, StoreRefused]]) -> None:
        if self._committing is not None and not self._committing.done():
            self._committing.add_done_callback(lambda _: self._start(commit))
            return
        self._next = self._timer = None  # outcomes handed over from now on: the next commit
        if not commit.cancelled():
            self._committing = asyncio.ensure_future(self._commit(commit))

    async def _commit(self, commit: asyncio.Future[dict[str, StoreRefused]]) -> None:
        asked, self._asked = self._asked, {}
        results = {
            name: result
            for name, result in self._execution.steps.items()
            if result.status in ENDED and self._written.get(name) != (id(result), result.status)
        } | asked
        try:
            refused = await self._save(results)
        except asyncio.CancelledError:
            commit.cancel()
            raise
        except Exception as exc:
            if not commit.done():
                commit.set_exception(exc)
                commit.exception()  # its callers may all be gone: not "never retrieved"
            return
        self._written |= {
            name: (id(result), result.status)
            for name, result in results.items()
            if name not in refused
        }
        if not commit.done():
            commit.set_result(refused)

    async def _save(self, results: dict[str, StepResult]) -> dict[str, StoreRefused]:
        """Save `results` in one write; if the store refuses it, each alone: those refused."""
        execution_id = self._execution.execution_id
        try:
            await self._store.save_steps(execution_id, results)
            return {}
        except StoreRefused as exc:
            if len(results) == 1:
                return dict.fromkeys(results, exc)
        refused = {}
        for name, result in results.items():
            try:
                await self._store.save_steps(execution_id, {name: result})
            except StoreRefused as exc:
                refused[name] = exc
        return refused
