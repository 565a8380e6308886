"""The project as a test wants it: its flows pointed at stand-ins, settings read from
nowhere but the test, the original guide's payload with every step on."""

from __future__ import annotations

import tempfile
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from service.backends.firestore import FirestoreStore
from service.dev.standins import FUNCTIONS
from service.engine.flow import Flow, load_flow, load_flows
from service.messages import SEED_PAYLOAD
from service.settings import PROJECT_FLOWS_DIR, Settings

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def project_flows(
    base_url: str = "https://fn.example", whole_document: bool = False
) -> dict[str, Flow]:
    """The project's flows, their ML function URLs under `base_url`; with `whole_document`,
    also the default flow without its `result:`, which delivers the whole document."""
    env = {name: base_url + path for name, path in FUNCTIONS.items()}
    flows = load_flows(PROJECT_FLOWS_DIR, env)
    if not whole_document:
        return flows
    default = yaml.safe_load((PROJECT_FLOWS_DIR / "ml-orchestration.yaml").read_text())
    del default["result"]
    path = Path(tempfile.mkdtemp()) / "whole-document.yaml"
    path.write_text(yaml.safe_dump(default))
    return flows | {"whole-document": load_flow(path, env)}


def full_seed(**overrides: Any) -> dict[str, Any]:
    """The original guide's test payload with every step switched on (the whole flow runs)."""
    return {**SEED_PAYLOAD, "create_user_embedding": True, **overrides}


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


def fresh_firestore_store() -> FirestoreStore:
    """A store on the emulator in a project of its own (FIRESTORE_EMULATOR_HOST is set)."""
    return FirestoreStore(f"test-{uuid.uuid4().hex[:8]}", "executions", timedelta(days=7))
