"""Settings, read once from the environment and `.env` (names as in the README's table)."""

from __future__ import annotations

import base64
import math
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Self

from dotenv import dotenv_values
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.bounds import MAX_PAYLOAD_BYTES
from service.errors import ConfigError

PROJECT_FLOWS_DIR = Path(__file__).resolve().parent.parent / "flows"
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"


class MLAuth(StrEnum):
    ID_TOKEN = "id_token"  # noqa: S105 - a mode's name, not a secret
    NONE = "none"


class StoreKind(StrEnum):
    MEMORY = "memory"
    FIRESTORE = "firestore"


class LogFormat(StrEnum):
    JSON = "json"
    CONSOLE = "console"


class FlowFolders(BaseSettings):
    """FLOWS_DIR alone: what reading the flow files needs (`python -m service schedules`
    for infra/setup.sh), whatever else the environment holds or lacks."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # One folder, or several separated by ":" (a flow's name is unique across them).
    flows_dir: Annotated[tuple[Path, ...], NoDecode] = (PROJECT_FLOWS_DIR,)

    @field_validator("flows_dir", mode="before")
    @classmethod
    def _folders(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(Path(part) for part in value.split(os.pathsep) if part)
        return (value,) if isinstance(value, Path) else value

    @classmethod
    def load(cls) -> Self:
        """Read the settings, turning pydantic's report into one line per bad setting."""
        try:
            return cls()
        except ValidationError as exc:
            raise ConfigError(describe_settings_errors(exc)) from None


class Settings(FlowFolders):
    """Everything the service reads from its environment."""

    google_cloud_project: str | None = None
    pubsub_emulator_host: str | None = None
    firestore_emulator_host: str | None = None
    orchestration_topic: str = Field("ml-orchestration-requests", min_length=3, max_length=255)
    result_topic: str | None = Field(None, min_length=3, max_length=255)
    default_flow: str = "ml-orchestration"
    ml_auth: MLAuth = MLAuth.ID_TOKEN
    push_auth_audience: str | None = None
    push_auth_service_account: str | None = None
    push_auth_certs_url: str = GOOGLE_CERTS_URL
    admin_emails: str | None = None
    webhook_secret: str | None = None
    default_webhook_url: str | None = None
    webhook_allow_private_networks: bool = False
    webhook_allowed_hosts: str | None = None
    webhook_max_bytes: int = Field(MAX_PAYLOAD_BYTES, ge=100_000, le=100_000_000)
    public_url: str | None = Field(None, pattern=r"^https?://[^\s?#]+$")
    flow_timeout_s: float = Field(540, gt=0, le=600)
    inline_wait_s: float = Field(10, ge=0, le=60)
    wake_interval_s: float | None = Field(None, ge=0, le=3600)
    k_service: str | None = None  # set by Cloud Run
    execution_store: StoreKind = StoreKind.MEMORY
    firestore_collection: str = Field(
        "ml-orchestrator-executions", pattern=r"^[A-Za-z0-9_-]{1,100}$"
    )
    execution_lease_s: float = Field(30, ge=3, le=300)
    execution_ttl_days: float = Field(7, gt=0, le=3650)
    push_max_delivery_attempts: int = Field(5, ge=5, le=100)
    ml_max_concurrency_per_host: int = Field(100, ge=1, le=10_000)
    log_format: LogFormat = LogFormat.JSON
    web_concurrency: int | None = Field(None, ge=1, le=64)
    host: str = "0.0.0.0"  # where `python -m service` listens
    port: int = Field(8080, ge=1, le=65535)

    @field_validator("webhook_secret")
    @classmethod
    def _secret_is_standard_webhooks(cls, value: str | None) -> str | None:
        if value is None:
            return None
        body = value.removeprefix("whsec_")
        try:
            key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
        except ValueError:
            raise ValueError("must be 'whsec_' followed by base64") from None
        if len(key) < 24:
            raise ValueError("must hold at least 24 bytes of key")
        return value

    @field_validator(
        "google_cloud_project",
        "pubsub_emulator_host",
        "firestore_emulator_host",
        "result_topic",
        "push_auth_audience",
        "push_auth_service_account",
        "webhook_secret",
        "default_webhook_url",
        "webhook_allowed_hosts",
        "public_url",
        "admin_emails",
        "k_service",
        "wake_interval_s",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `.env` files and Cloud Run templates write `NAME=` for "not set".
        return None if value == "" else value

    @model_validator(mode="after")
    def _pubsub_needs_a_project(self) -> Self:
        if self.pubsub_emulator_host and not self.google_cloud_project:
            raise ValueError("GOOGLE_CLOUD_PROJECT: required when PUBSUB_EMULATOR_HOST is set")
        if self.execution_store == StoreKind.FIRESTORE and not self.google_cloud_project:
            raise ValueError("GOOGLE_CLOUD_PROJECT: required when EXECUTION_STORE=firestore")
        if self.push_auth_service_account and not self.push_auth_audience:
            raise ValueError("PUSH_AUTH_AUDIENCE: required when PUSH_AUTH_SERVICE_ACCOUNT is set")
        if (self.web_concurrency or 1) > 1 and self.execution_store == StoreKind.MEMORY:
            raise ValueError(
                "WEB_CONCURRENCY: more than one worker needs EXECUTION_STORE=firestore "
                "(with the in-memory store each worker would keep its own executions)"
            )
        if self.admin_emails and not self.service_url:
            raise ValueError(
                "PUSH_AUTH_AUDIENCE or PUBLIC_URL: required when ADMIN_EMAILS is set "
                "(the service URL is the audience of operators' tokens)"
            )
        return self

    @property
    def allowed_webhook_hosts(self) -> frozenset[str] | None:
        """WEBHOOK_ALLOWED_HOSTS as a set of lower-case host names, None when unset."""
        return _lower_case_set(self.webhook_allowed_hosts)

    @property
    def operator_emails(self) -> frozenset[str] | None:
        """ADMIN_EMAILS as a set of lower-case emails, None when unset."""
        return _lower_case_set(self.admin_emails)

    @property
    def service_url(self) -> str | None:
        """The service's own URL: PUBLIC_URL, else the push audience (set to it on Cloud Run)."""
        return self.public_url or self.push_auth_audience

    @property
    def wake_every_s(self) -> float:
        """How often the service fires its own due timers: WAKE_INTERVAL_S, else every
        second off Cloud Run and never on it (Cloud Scheduler calls POST /executions/wake)."""
        if self.wake_interval_s is not None:
            return self.wake_interval_s
        return 0.0 if self.k_service else 1.0

    @property
    def uses_pubsub(self) -> bool:
        """Real Pub/Sub (or its emulator) rather than the embedded transport."""
        return bool(self.pubsub_emulator_host or self.google_cloud_project)

    @property
    def workers(self) -> int:
        """WEB_CONCURRENCY, else one per CPU with a shared store and 1 with the in-memory one."""
        if self.web_concurrency is not None:
            return self.web_concurrency
        return available_cpus() if self.execution_store == StoreKind.FIRESTORE else 1

    def flow_env(self) -> dict[str, str]:
        """What `${env.NAME}` in flows reads: the environment over `.env`, like the settings."""
        dotenv = dotenv_values(".env")
        return {**{k: v for k, v in dotenv.items() if v is not None}, **os.environ}


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The CPUs this process may use: its cgroup's quota (containers), else its affinity."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cgroup.read_text().split()
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, math.ceil(int(quota) / int(period))))


def _lower_case_set(value: str | None) -> frozenset[str] | None:
    """A comma-separated setting as a set of lower-case items; None when unset."""
    if not value:
        return None
    return frozenset(item.strip().lower() for item in value.split(",") if item.strip())


def describe_settings_errors(exc: ValidationError) -> str:
    """One line naming each bad setting by its environment name."""
    parts = []
    for error in exc.errors():
        name = "_".join(str(part) for part in error["loc"]).upper()
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{name}: {message}" if name else message)
    return "invalid settings: " + "; ".join(parts)
