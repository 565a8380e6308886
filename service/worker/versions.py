"""Flow versions: every execution runs the version of its flow it started on.

A flow's version is a hash of its definition as loaded (service/engine/flow.py).
Before an instance starts an execution of today's version it keeps that version's
definition in the store, once per instance; an execution pinned to another version
(started before a deploy edited or removed its file) runs that version, compiled
from the store with today's environment (`${env.NAME}`) and kept compiled here.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping

from service.backends.store import VersionStore
from service.engine.flow import Flow, compile_flow
from service.errors import FlowError
from service.execution import Execution

COMPILED_VERSIONS = 100  # older versions kept compiled in an instance


class VersionMissing(Exception):
    """The version an execution is pinned to cannot be run."""


class FlowVersions:
    """Today's flows and the versions executions are pinned to."""

    def __init__(
        self, flows: Mapping[str, Flow], store: VersionStore, env: Mapping[str, str]
    ) -> None:
        self.current = flows
        self._store = store
        self._env = env
        self._kept: set[tuple[str, str]] = set()
        self._compiled: OrderedDict[tuple[str, str], Flow] = OrderedDict()

    async def keep(self, flow: Flow) -> None:
        """Store today's version of `flow`, unless this instance did."""
        key = (flow.name, flow.version)
        if key not in self._kept:
            await self._store.keep_flow(flow.name, flow.version, flow.source)
            self._kept.add(key)

    async def of(self, execution: Execution) -> Flow:
        """The flow version `execution` runs; VersionMissing when it cannot."""
        name, version = execution.flow, execution.flow_version
        current = self.current.get(name)
        if current is not None and version in (None, current.version):
            return current
        if version is None:
            raise VersionMissing(f"flow {name!r} is no longer defined")
        key = (name, version)
        flow = self._compiled.get(key)
        if flow is None:
            source = await self._store.flow_source(name, version)
            if source is None:
                raise VersionMissing(f"flow {name!r} version {version} is not in the store")
            try:
                flow = compile_flow(name, json.loads(source), self._env, f"{name}@{version}")
            except FlowError as exc:
                raise VersionMissing(
                    f"flow {name!r} version {version} no longer loads: {exc}"
                ) from None
            self._compiled[key] = flow
            if len(self._compiled) > COMPILED_VERSIONS:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(key)
        return flow
