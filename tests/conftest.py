"""Shared fixtures: the Pub/Sub emulator, a fake metadata server, loopback servers.

google-auth reads GCE_METADATA_HOST when it is first imported, so the fake
metadata server's address is chosen here, before anything imports google-auth.
"""

from __future__ import annotations

import os
import socket


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


METADATA_PORT = _free_port()
os.environ["GCE_METADATA_HOST"] = f"127.0.0.1:{METADATA_PORT}"
os.environ["GCE_METADATA_IP"] = f"127.0.0.1:{METADATA_PORT}"
os.environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)

from collections import Counter  # noqa: E402
from collections.abc import AsyncIterator, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from service.backends.memory import MemoryStore  # noqa: E402
from service.backends.store import ExecutionStore  # noqa: E402
from service.dev.emulator import (  # noqa: E402
    Emulator,
    find_emulator,
    find_firestore_emulator,
)
from service.dev.servers import serve  # noqa: E402
from tests.support.identity import Identity, metadata_server  # noqa: E402
from tests.support.project import fresh_firestore_store  # noqa: E402

EMULATOR_MISSING = (
    "!!! {missing} NOT FOUND: the tests marked 'emulator' were NOT RUN. Install the Google "
    "Cloud SDK's pubsub-emulator and cloud-firestore-emulator components (Java 17), or set "
    "PUBSUB_EMULATOR_BIN / FIRESTORE_EMULATOR_JAR. !!!"
)


def pytest_configure(config: pytest.Config) -> None:
    found = {"Pub/Sub emulator": find_emulator(), "Firestore emulator": find_firestore_emulator()}
    config.stash[_EMULATORS] = found
    missing = " and ".join(name for name, path in found.items() if path is None)
    config.stash[_MISSING] = EMULATOR_MISSING.format(missing=missing) if missing else None
    if missing and os.environ.get("CI"):
        raise pytest.UsageError(f"CI: the emulators must be installed; {config.stash[_MISSING]}")


def pytest_report_header(config: pytest.Config) -> str:
    found = ", ".join(f"{name}: {path}" for name, path in config.stash[_EMULATORS].items())
    return config.stash[_MISSING] or found


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The tests that start processes first: in parallel (scripts/test.sh) the longest of
    # them (the tiny benchmark, two minutes) then runs beside the rest, not after it.
    items.sort(key=lambda item: "slow" not in item.keywords)
    if config.stash[_MISSING] is None:
        return
    skip = pytest.mark.skip(reason="Pub/Sub emulator not installed")
    for item in items:
        if "emulator" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if config.stash[_MISSING] is not None:
        not_run = [
            report.nodeid
            for report in terminalreporter.stats.get("skipped", [])
            if "emulator" in report.keywords
        ]
        terminalreporter.write_line(config.stash[_MISSING], red=True, bold=True)
        for nodeid in not_run:
            terminalreporter.write_line(f"    not run: {nodeid}", red=True)


_EMULATORS = pytest.StashKey[dict[str, Path | None]]()
_MISSING = pytest.StashKey[str | None]()


@pytest.fixture(scope="session")
def emulator(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Emulator]:
    """The real Pub/Sub emulator on a free port, with a capped heap; stopped after the session."""
    binary = pytestconfig.stash[_EMULATORS]["Pub/Sub emulator"]
    assert binary is not None, "emulator tests run only where it is installed"
    log = tmp_path_factory.mktemp("emulator") / "pubsub.log"
    running = Emulator.start(binary, log=log)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def firestore_emulator(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Emulator]:
    """The real Firestore emulator on a free port, its address in FIRESTORE_EMULATOR_HOST."""
    jar = pytestconfig.stash[_EMULATORS]["Firestore emulator"]
    assert jar is not None, "emulator tests run only where it is installed"
    log = tmp_path_factory.mktemp("emulator") / "firestore.log"
    running = Emulator.start_firestore(jar, log=log)
    os.environ["FIRESTORE_EMULATOR_HOST"] = running.host
    yield running
    os.environ.pop("FIRESTORE_EMULATOR_HOST", None)
    running.stop()


@pytest.fixture(params=["memory", pytest.param("firestore", marks=pytest.mark.emulator)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ExecutionStore]:
    """Each store in turn: in memory, and on the Firestore emulator (a project of its own).
    A module that needs another (a faulty one, say) defines its own `store`."""
    if request.param == "memory":
        yield MemoryStore()
        return
    request.getfixturevalue("firestore_emulator")
    firestore = fresh_firestore_store()
    yield firestore
    await firestore.close()


@pytest.fixture(scope="session")
def identity() -> Identity:
    return Identity()


@pytest.fixture(scope="session")
def metadata(identity: Identity) -> Iterator[Counter[str]]:
    """The fake metadata server on the port google-auth was told about; yields fetch counts."""
    app, fetches = metadata_server(identity)
    with serve(app, port=METADATA_PORT):
        yield fetches
