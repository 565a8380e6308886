"""Flow versions: the version an execution is pinned to, from today's flows or the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.backends.memory import MemoryStore
from service.engine.flow import load_flow
from service.execution import Execution, ExecutionStatus
from service.worker.versions import FlowVersions, VersionMissing

FLOW = "steps:\n  one:\n    call: ${env.ONE_URL}\n    body: {v: V}\n"


def flow_file(tmp_path: Path, version: int) -> Path:
    path = tmp_path / f"v{version}" / "f.yaml"
    path.parent.mkdir()
    path.write_text(FLOW.replace("V", str(version)))
    return path


def pinned(version: str | None) -> Execution:
    return Execution(
        execution_id="e", flow="f", status=ExecutionStatus.RUNNING, input={}, flow_version=version
    )


async def test_an_execution_runs_its_version_kept_in_the_store(tmp_path: Path) -> None:
    env = {"ONE_URL": "https://one.example"}
    old, new = load_flow(flow_file(tmp_path, 1), env), load_flow(flow_file(tmp_path, 2), env)
    comment_only = flow_file(tmp_path, 3)
    comment_only.write_text("# a comment\n" + FLOW.replace("V", "1"))
    assert old.version != new.version
    assert load_flow(comment_only, env).version == old.version  # comments do not count
    store = MemoryStore()
    await FlowVersions({"f": old}, store, env).keep(old)  # yesterday's deploy kept it
    today = FlowVersions({"f": new}, store, env)
    assert (await today.of(pinned(None))) is new  # not pinned yet: today's
    assert (await today.of(pinned(new.version))) is new
    ran = await today.of(pinned(old.version))
    assert ran.version == old.version and ran.steps["one"].body == {"v": 1}
    assert json.loads(ran.source) == json.loads(old.source)


async def test_a_version_that_cannot_run_says_why(tmp_path: Path) -> None:
    old = load_flow(flow_file(tmp_path, 1), {"ONE_URL": "https://one.example"})
    store = MemoryStore()
    await store.keep_flow("f", old.version, old.source)
    unset = FlowVersions({}, store, {})  # ONE_URL is gone from today's environment
    with pytest.raises(VersionMissing, match=r"no longer loads: .*ONE_URL is not set"):
        await unset.of(pinned(old.version))
    with pytest.raises(VersionMissing, match="version 0000 is not in the store"):
        await unset.of(pinned("0000"))
    with pytest.raises(VersionMissing, match="flow 'f' is no longer defined"):
        await unset.of(pinned(None))
