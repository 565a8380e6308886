"""Settings: read from the environment, refused at start-up with one line naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.dev.emulator import Emulator, EmulatorAdmin
from service.dev.servers import serve
from service.errors import ConfigError
from service.settings import Settings, available_cpus

ROOT = Path(__file__).resolve().parent.parent
URLS = {
    "DEFAULT_CREATE_USER_EMBEDDINGS_URL": "https://fn.example/a",
    "DEFAULT_PROFESSION_ORCHESTRATOR_URL": "https://fn.example/b",
    "DEFAULT_MATCH_CANDIDATO_URL": "https://fn.example/c",
    "DEFAULT_MATCH_ANALYSIS_USER_VACANCY_URL": "https://fn.example/d",
}


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """A clean environment, in a folder with no `.env`."""
    for name in list(os.environ):
        if name.startswith(
            ("PUBSUB_", "GOOGLE_", "WEBHOOK_", "PUSH_AUTH_", "RESULT_", "ML_", "FLOW")
        ):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_defaults_follow_the_design(environment: pytest.MonkeyPatch) -> None:
    settings = Settings.load()
    assert settings.orchestration_topic == "ml-orchestration-requests"
    assert settings.default_flow == "ml-orchestration"
    assert settings.ml_auth == "id_token"
    assert settings.flow_timeout_s == 540
    assert settings.log_format == "json"
    assert not settings.webhook_allow_private_networks
    assert not settings.uses_pubsub


def test_the_emulator_or_a_project_selects_pubsub(environment: pytest.MonkeyPatch) -> None:
    environment.setenv("GOOGLE_CLOUD_PROJECT", "p")
    assert Settings.load().uses_pubsub


def test_dotenv_is_read_and_the_environment_wins(environment: pytest.MonkeyPatch) -> None:
    Path(".env").write_text(
        "RESULT_TOPIC=from-dotenv\nORCHESTRATION_TOPIC=dotenv-topic\nX_URL=https://x\n"
    )
    environment.setenv("ORCHESTRATION_TOPIC", "env-topic")
    settings = Settings.load()
    assert settings.result_topic == "from-dotenv"
    assert settings.orchestration_topic == "env-topic"
    assert settings.flow_env()["X_URL"] == "https://x"


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("FLOW_TIMEOUT_S", "601", "FLOW_TIMEOUT_S: Input should be less than or equal to 600"),
        ("FLOW_TIMEOUT_S", "soon", "FLOW_TIMEOUT_S: Input should be a valid number"),
        ("ML_AUTH", "magic", "ML_AUTH: Input should be 'id_token' or 'none'"),
        ("WEBHOOK_SECRET", "whsec_%%%", "WEBHOOK_SECRET: must be 'whsec_' followed by base64"),
        ("WEBHOOK_SECRET", "whsec_c2hvcnQ=", "WEBHOOK_SECRET: must hold at least 24 bytes"),
        ("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085", "GOOGLE_CLOUD_PROJECT: required when"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT: Input should be 'json' or 'console'"),
        ("WEB_CONCURRENCY", "2", "WEB_CONCURRENCY: more than one worker needs EXECUTION_STORE"),
        ("WEB_CONCURRENCY", "0", "WEB_CONCURRENCY: Input should be greater than or equal to 1"),
    ],
)
def test_a_bad_setting_is_named_with_its_reason(
    environment: pytest.MonkeyPatch, name: str, value: str, reason: str
) -> None:
    environment.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        Settings.load()
    assert reason in str(caught.value)
    assert "\n" not in str(caught.value)


def test_workers_are_one_per_cpu_with_a_shared_store_and_one_without(
    environment: pytest.MonkeyPatch,
) -> None:
    assert Settings.load().workers == 1
    environment.setenv("GOOGLE_CLOUD_PROJECT", "p")
    environment.setenv("EXECUTION_STORE", "firestore")
    assert Settings.load().workers == available_cpus()
    environment.setenv("WEB_CONCURRENCY", "3")
    assert Settings.load().workers == 3


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("200000 100000", 2), ("150000 100000", 2), ("50000 100000", 1), ("max 100000", None)],
)
def test_the_cpu_count_follows_the_container_s_quota(
    tmp_path: Path, cpu_max: str, expected: int | None
) -> None:
    """Cloud Run's 2 vCPUs are a cgroup quota; the machine under it may have more cores."""
    cgroup = tmp_path / "cpu.max"
    cgroup.write_text(cpu_max + "\n")
    cores = len(os.sched_getaffinity(0))
    assert available_cpus(cgroup) == min(expected or cores, cores)
    assert available_cpus(tmp_path / "absent") == cores


def run_service(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DEFAULT_", "PUBSUB_", "GOOGLE_CLOUD"))
    }
    return subprocess.run(
        [sys.executable, "-m", "service"],
        env={**clean, "PYTHONPATH": str(ROOT), "PORT": "1", **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow  # starts the service as its own process
def test_start_up_stops_with_one_line_for_a_missing_url(tmp_path: Path) -> None:
    env = dict(URLS)
    del env["DEFAULT_MATCH_CANDIDATO_URL"]
    result = run_service(env, tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "DEFAULT_MATCH_CANDIDATO_URL is not set" in result.stderr
    assert "step 'match_candidato'" in result.stderr


@pytest.mark.slow  # starts the service as its own process
def test_start_up_stops_with_one_line_for_an_invalid_flow(tmp_path: Path) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "ml-orchestration.yaml").write_text("steps:\n  a: {call: 'https://x', after: [zz]}\n")
    result = run_service({**URLS, "FLOWS_DIR": str(flows)}, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("step 'a': after: unknown step 'zz'")
    assert result.stderr.count("\n") == 1


@pytest.mark.slow  # starts the service as its own process
def test_start_up_stops_for_an_unknown_default_flow(tmp_path: Path) -> None:
    result = run_service({**URLS, "DEFAULT_FLOW": "nope"}, tmp_path)
    assert result.returncode == 2
    assert "DEFAULT_FLOW: no flow named 'nope'" in result.stderr


def test_every_setting_is_in_the_readme_and_the_templates() -> None:
    """A newcomer finds each setting documented; the templates leave out only local ones."""
    root = Path(__file__).resolve().parent.parent
    names = {name.upper() for name in Settings.model_fields} - {"K_SERVICE"}  # Cloud Run's
    assert "K_SERVICE" in (root / "README.md").read_text()
    only_local = {
        "PUBSUB_EMULATOR_HOST",
        "FIRESTORE_EMULATOR_HOST",
        "FLOWS_DIR",
        "PUSH_AUTH_CERTS_URL",
        "HOST",
        "PORT",  # Cloud Run sets it and refuses it in a service's settings
    }
    for file, expected in (
        ("README.md", names),
        (".env.example", names - {"PUSH_AUTH_CERTS_URL"}),
        ("env-vars-template.yaml", names - only_local),
    ):
        text = (root / file).read_text()
        assert sorted(name for name in expected if name not in text) == [], file


@pytest.mark.emulator
def test_the_emulator_set_only_in_dotenv_is_the_one_the_clients_use(
    environment: pytest.MonkeyPatch, emulator: Emulator
) -> None:
    """Before: Settings chose Pub/Sub from `.env`, the client went to real Pub/Sub: 500."""
    environment.delenv("FIRESTORE_EMULATOR_HOST", raising=False)
    project = f"dotenv-{uuid.uuid4().hex[:8]}"
    Path(".env").write_text(
        f"PUBSUB_EMULATOR_HOST={emulator.host}\nGOOGLE_CLOUD_PROJECT={project}\nML_AUTH=none\n"
        + "".join(f"{name}={url}\n" for name, url in URLS.items())
    )
    EmulatorAdmin(emulator.host, project).topic("ml-orchestration-requests")
    with serve(create_app(Settings.load())) as url:
        ready = httpx.get(f"{url}/ready")
        accepted = httpx.post(f"{url}/orchestrate", json={"user_id": "u", "session_id": "s"})
    assert ready.status_code == 200, ready.text
    assert accepted.status_code == 202, accepted.text


def test_no_google_credentials_is_a_503_naming_them(environment: pytest.MonkeyPatch) -> None:
    """Real Pub/Sub chosen, no credentials to reach it: 503 with the reason, never a 500."""
    environment.setenv("GOOGLE_CLOUD_PROJECT", "p")
    environment.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")
    environment.setenv("ML_AUTH", "none")
    for name, value in URLS.items():
        environment.setenv(name, value)
    with serve(create_app(Settings.load())) as url:
        ready = httpx.get(f"{url}/ready")
        refused = httpx.post(f"{url}/orchestrate", json={"user_id": "u", "session_id": "s"})
    for response in (ready, refused):
        assert response.status_code == 503, response.text
        assert "no Google credentials" in response.json()["detail"]
