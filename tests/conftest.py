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
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from service.dev.demo import FUNCTIONS  # noqa: E402
from service.dev.emulator import Emulator, find_emulator  # noqa: E402
from service.flow import Flow, load_flows  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.support.identity import Identity, metadata_server  # noqa: E402
from tests.support.servers import serve  # noqa: E402

EMULATOR_MISSING = (
    "!!! Pub/Sub emulator NOT FOUND: the tests marked 'emulator' were NOT RUN. Install the "
    "Google Cloud SDK's pubsub-emulator component (Java 17) or set PUBSUB_EMULATOR_BIN. !!!"
)
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def pytest_configure(config: pytest.Config) -> None:
    binary = find_emulator()
    config.stash[_EMULATOR] = binary
    if binary is None and os.environ.get("CI"):
        raise pytest.UsageError("CI: the Pub/Sub emulator must be installed; " + EMULATOR_MISSING)


def pytest_report_header(config: pytest.Config) -> str:
    binary = config.stash[_EMULATOR]
    return f"pubsub emulator: {binary}" if binary else EMULATOR_MISSING


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.stash[_EMULATOR] is not None:
        return
    skip = pytest.mark.skip(reason="Pub/Sub emulator not installed")
    for item in items:
        if "emulator" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if config.stash[_EMULATOR] is None:
        not_run = [
            report.nodeid
            for report in terminalreporter.stats.get("skipped", [])
            if "emulator" in report.keywords
        ]
        terminalreporter.write_line(EMULATOR_MISSING, red=True, bold=True)
        for nodeid in not_run:
            terminalreporter.write_line(f"    not run: {nodeid}", red=True)


_EMULATOR = pytest.StashKey[Path | None]()


@pytest.fixture(scope="session")
def emulator(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Emulator]:
    """The real Pub/Sub emulator on a free port, with a capped heap; stopped after the session."""
    binary = pytestconfig.stash[_EMULATOR]
    assert binary is not None, "emulator tests run only where it is installed"
    log = tmp_path_factory.mktemp("emulator") / "emulator.log"
    running = Emulator.start(binary, log=log)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def identity() -> Identity:
    return Identity()


@pytest.fixture(scope="session")
def metadata(identity: Identity) -> Iterator[Counter[str]]:
    """The fake metadata server on the port google-auth was told about; yields fetch counts."""
    app, fetches = metadata_server(identity)
    with serve(app, port=METADATA_PORT):
        yield fetches


PROJECT_FLOWS_DIR = Path(__file__).resolve().parent.parent / "flows"


def project_flows(base_url: str = "https://fn.example") -> dict[str, Flow]:
    """The project's flows, their ML function URLs under `base_url`."""
    return load_flows(
        PROJECT_FLOWS_DIR, {name: base_url + path for name, path in FUNCTIONS.items()}
    )


def make_settings(**overrides: Any) -> Settings:
    """Settings for a test: nothing read from the environment's Pub/Sub or a `.env` file."""
    values: dict[str, Any] = {
        "google_cloud_project": None,
        "pubsub_emulator_host": None,
        "ml_auth": "none",
        "log_format": "json",
        "webhook_secret": WEBHOOK_SECRET,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)
