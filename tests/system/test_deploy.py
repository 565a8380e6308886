"""The deploy and operations scripts, against recording fakes of gcloud and docker."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from service.backends.firestore_layout import HEAD_FIELDS

# Starts processes or tools (or fuzzes): the full tier only (`./scripts/test.sh`).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent.parent
FAKEBIN = ROOT / "tests" / "support" / "fakebin"
SCRIPTS = sorted([*ROOT.glob("scripts/*.sh"), ROOT / "infra" / "setup.sh"])
URL = "https://ml-orchestrator-123456789.us-east1.run.app"
PUSH_ACCOUNT = "ml-orchestrator-push@proj.iam.gserviceaccount.com"
ENV_VARS = """\
DEFAULT_CREATE_USER_EMBEDDINGS_URL: 'https://fn.example/embeddings'
DEFAULT_PROFESSION_ORCHESTRATOR_URL: 'https://fn.example/professions'
DEFAULT_MATCH_CANDIDATO_URL: 'https://fn.example/match'
DEFAULT_MATCH_ANALYSIS_USER_VACANCY_URL: 'https://fn.example/analysis'
"""


@dataclass
class Result:
    code: int
    out: str
    err: str
    calls: list[dict[str, object]]

    def commands(self, tool: str = "gcloud") -> list[list[str]]:
        return [call["args"] for call in self.calls if call["tool"] == tool]  # type: ignore[misc]

    def command(self, *words: str) -> list[str]:
        matches = [args for args in self.commands() if all(w in args for w in words)]
        assert len(matches) == 1, (words, self.commands())
        return matches[0]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "state").mkdir()
    (tmp_path / "repo").mkdir()
    return tmp_path


def run(workdir: Path, script: str, *args: str, path: str | None = None, **env: str) -> Result:
    log = workdir / "calls.jsonl"
    log.unlink(missing_ok=True)
    environment = {
        **os.environ,
        "PATH": path if path is not None else f"{FAKEBIN}:{os.environ['PATH']}",
        "FAKE_LOG": str(log),
        "FAKE_STATE": str(workdir / "state"),
        **env,
    }
    done = subprocess.run(
        ["bash", str(ROOT / script), *args],
        cwd=workdir / "repo",
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return Result(done.returncode, done.stdout, done.stderr, calls)


def mutations(result: Result) -> list[list[str]]:
    read_only = {"describe", "list"}
    return [args for args in result.commands() if not read_only & set(args)]


def test_setup_creates_the_push_subscription_with_the_flags_that_matter(workdir: Path) -> None:
    result = run(workdir, "infra/setup.sh", "proj", "us-east1")
    assert result.code == 0, result.err
    push = result.command("subscriptions", "create", "ml-orchestrator-push")
    assert flag(push, "--topic") == "ml-orchestration-requests"
    assert flag(push, "--push-endpoint") == f"{URL}/pubsub/push"
    assert flag(push, "--push-auth-service-account") == PUSH_ACCOUNT
    assert flag(push, "--push-auth-token-audience") == URL
    assert flag(push, "--ack-deadline") == "600"
    assert flag(push, "--min-retry-delay") == "10s"
    assert flag(push, "--max-retry-delay") == "600s"
    assert flag(push, "--dead-letter-topic") == "ml-orchestration-requests-dead-letter"
    assert flag(push, "--max-delivery-attempts") == "5"
    for topic in (
        "ml-orchestration-requests",
        "ml-orchestration-results",
        "ml-orchestration-requests-dead-letter",
    ):
        result.command("topics", "create", topic)
    minting = result.command("service-accounts", "add-iam-policy-binding", PUSH_ACCOUNT)
    assert (
        flag(minting, "--member")
        == "serviceAccount:service-123456789@gcp-sa-pubsub.iam.gserviceaccount.com"
    )
    assert flag(minting, "--role") == "roles/iam.serviceAccountTokenCreator"
    result.command("topics", "add-iam-policy-binding", "ml-orchestration-requests-dead-letter")
    assert f"PUSH_AUTH_AUDIENCE: '{URL}'" in result.err


def test_setup_creates_the_job_that_wakes_due_executions_every_minute(workdir: Path) -> None:
    result = run(workdir, "infra/setup.sh", "proj", "us-east1")
    assert result.code == 0, result.err
    job = result.command("scheduler", "jobs", "create", "http", "ml-orchestrator-wake")
    assert flag(job, "--schedule") == "* * * * *"
    assert flag(job, "--uri") == f"{URL}/executions/wake"
    assert flag(job, "--http-method") == "POST"
    assert flag(job, "--oidc-service-account-email") == PUSH_ACCOUNT
    assert flag(job, "--oidc-token-audience") == URL
    assert "cloudscheduler.googleapis.com" in result.command("services", "enable")


SCHEDULED = """
input:
  user_id: {type: string, required: true}
steps:
  report:
    call: ${env.REPORT_URL}
    body: {user_id: "${input.user_id}"}
schedules:
  - {name: report, cron: "CRON", time_zone: Europe/Madrid, input: {user_id: all}}
  - {name: cleanup, cron: "0 3 * * *", input: {user_id: nobody}}
"""


def test_setup_keeps_one_scheduler_job_per_declared_schedule(workdir: Path) -> None:
    """Created, then updated when a schedule changes and deleted when none declares it;
    read without the flows' environment (REPORT_URL is unset)."""
    flows = workdir / "flows"
    flows.mkdir()
    (flows / "nightly.yaml").write_text(SCHEDULED.replace("CRON", "0 6 * * 1-5"))
    first = run(workdir, "infra/setup.sh", "proj", "us-east1", "--schedules", FLOWS_DIR=str(flows))
    assert first.code == 0, first.err
    job = first.command("scheduler", "jobs", "create", "ml-orchestrator-schedule-nightly-report")
    assert flag(job, "--schedule") == "0 6 * * 1-5"
    assert flag(job, "--time-zone") == "Europe/Madrid"
    assert flag(job, "--uri") == f"{URL}/orchestrate"
    assert flag(job, "--http-method") == "POST"
    assert flag(job, "--headers") == "Content-Type=application/json"
    assert json.loads(flag(job, "--message-body")) == {"flow": "nightly", "user_id": "all"}
    assert flag(job, "--oidc-service-account-email") == PUSH_ACCOUNT
    assert flag(job, "--oidc-token-audience") == URL
    cleanup = first.command(
        "scheduler", "jobs", "create", "ml-orchestrator-schedule-nightly-cleanup"
    )
    assert flag(cleanup, "--time-zone") == "Etc/UTC"

    changed = SCHEDULED.replace("CRON", "30 7 * * *").split("  - {name: cleanup")[0]
    (flows / "nightly.yaml").write_text(changed)
    second = run(workdir, "infra/setup.sh", "proj", "us-east1", "--schedules", FLOWS_DIR=str(flows))
    assert second.code == 0, second.err
    update = second.command(
        "scheduler", "jobs", "update", "ml-orchestrator-schedule-nightly-report"
    )
    assert flag(update, "--schedule") == "30 7 * * *"
    assert flag(update, "--update-headers") == "Content-Type=application/json"
    deletes = [args for args in second.commands() if args[3:6] == ["scheduler", "jobs", "delete"]]
    assert [args[6] for args in deletes] == ["ml-orchestrator-schedule-nightly-cleanup"]


def test_setup_refuses_a_schedule_that_does_not_fit_its_flow(workdir: Path) -> None:
    flows = workdir / "flows"
    flows.mkdir()
    bad = SCHEDULED.replace("CRON", "0 6 * * *").replace("{user_id: all}", "{user: x}")
    (flows / "nightly.yaml").write_text(bad)
    result = run(workdir, "infra/setup.sh", "proj", "us-east1", "--schedules", FLOWS_DIR=str(flows))
    assert result.code != 0
    assert "schedules.0.input.user_id: Field required" in result.err
    made = [args for args in result.commands() if args[3:6] == ["scheduler", "jobs", "create"]]
    assert [args[7] for args in made] == ["ml-orchestrator-wake"]  # no schedule's job


TRIGGERED = """
input:
  user_id: {type: string, required: true}
steps:
  report:
    call: ${env.REPORT_URL}
    body: {user_id: "${input.user_id}"}
triggers:
  - {name: export, topic: TOPIC, input: {user_id: "${event.attributes.objectId}"}}
  - {name: other, topic: projects/data-team/topics/vertex-jobs, input: {user_id: x}}
"""


def test_setup_keeps_one_push_subscription_per_declared_trigger(workdir: Path) -> None:
    """Created with the main subscription's delivery, updated, made again on another
    topic, and deleted when no flow declares it; read without the flows' environment."""
    flows = workdir / "flows"
    flows.mkdir()
    (flows / "ingest.yaml").write_text(TRIGGERED.replace("TOPIC", "exports"))
    setup = ("infra/setup.sh", "proj", "us-east1", "--triggers")
    first = run(workdir, *setup, FLOWS_DIR=str(flows))
    assert first.code == 0, first.err
    main = first.command("subscriptions", "create", "ml-orchestrator-push")
    made = first.command("subscriptions", "create", "ml-orchestrator-trigger-ingest-export")
    assert flag(made, "--topic") == "projects/proj/topics/exports"
    assert flag(made, "--push-endpoint") == f"{URL}/pubsub/events/ingest/export"
    delivery = main[main.index("--push-auth-service-account") :]
    assert made[made.index("--push-auth-service-account") :] == delivery
    assert flag(delivery, "--push-auth-token-audience") == URL
    assert flag(delivery, "--dead-letter-topic") == "ml-orchestration-requests-dead-letter"
    first.command("topics", "create", "exports")  # ours, made when missing
    other = first.command("subscriptions", "create", "ml-orchestrator-trigger-ingest-other")
    assert flag(other, "--topic") == "projects/data-team/topics/vertex-jobs"
    assert not [args for args in first.commands() if "vertex-jobs" in args[3:6]]
    agent = first.command(
        "subscriptions", "add-iam-policy-binding", "ml-orchestrator-trigger-ingest-export"
    )
    assert flag(agent, "--role") == "roles/pubsub.subscriber"

    second = run(workdir, *setup, FLOWS_DIR=str(flows))
    assert second.code == 0, second.err
    update = second.command("subscriptions", "update", "ml-orchestrator-trigger-ingest-export")
    assert flag(update, "--push-endpoint") == f"{URL}/pubsub/events/ingest/export"
    assert not [args for args in second.commands() if "delete" in args]

    moved = TRIGGERED.replace("TOPIC", "exports-v2").split("  - {name: other")[0]
    (flows / "ingest.yaml").write_text(moved)
    third = run(workdir, *setup, FLOWS_DIR=str(flows))
    assert third.code == 0, third.err
    deleted = [
        args[6] for args in third.commands() if args[3:6] == ["pubsub", "subscriptions", "delete"]
    ]
    assert deleted == [
        "ml-orchestrator-trigger-ingest-export",  # its topic changed: made again
        "ml-orchestrator-trigger-ingest-other",  # no flow declares it
    ]
    again = third.command("subscriptions", "create", "ml-orchestrator-trigger-ingest-export")
    assert flag(again, "--topic") == "projects/proj/topics/exports-v2"


def test_setup_refuses_a_trigger_that_does_not_fit_its_flow(workdir: Path) -> None:
    flows = workdir / "flows"
    flows.mkdir()
    bad = TRIGGERED.replace("TOPIC", "exports").replace('{user_id: "', '{user: "')
    (flows / "ingest.yaml").write_text(bad)
    result = run(workdir, "infra/setup.sh", "proj", "us-east1", "--triggers", FLOWS_DIR=str(flows))
    assert result.code != 0
    assert "triggers.0.input.user_id: Field required" in result.err
    assert not [args for args in result.commands() if "ml-orchestrator-trigger-" in " ".join(args)]


def test_setup_a_second_time_creates_nothing(workdir: Path) -> None:
    first = run(workdir, "infra/setup.sh", "proj", "us-east1", "--firestore")
    state = sorted(path.name for path in (workdir / "state").iterdir())
    second = run(workdir, "infra/setup.sh", "proj", "us-east1", "--firestore")
    assert first.code == second.code == 0, second.err
    created = [args for args in first.commands() if "create" in args]
    # repository, 2 accounts, 3 topics, 2 subscriptions, the wake job, database, 5 indexes
    assert len(created) == 15
    # Indexes have no name to look up: their second create answers ALREADY_EXISTS.
    again = [args for args in second.commands() if "create" in args]
    assert {" ".join(args[3:7]) for args in again} == {"firestore indexes composite create"}
    assert sorted(path.name for path in (workdir / "state").iterdir()) == state


def test_setup_prepares_firestore_for_large_outputs_and_listing(workdir: Path) -> None:
    result = run(workdir, "infra/setup.sh", "proj", "us-east1", "--firestore")
    assert result.code == 0, result.err
    ttl_groups = {
        flag(args, "--collection-group")
        for args in result.commands()
        if args[3:6] == ["firestore", "fields", "ttls"]
    }
    assert ttl_groups == {
        "ml-orchestrator-executions",
        "execution-parts",
        "execution-ends",
        "ml-orchestrator-executions-cache",
    }
    indexes = [
        [value for n, value in enumerate(args) if args[n - 1] == "--field-config"]
        for args in result.commands()
        if args[3:7] == ["firestore", "indexes", "composite", "create"]
    ]
    newest_first = "field-path=requested_at,order=descending"
    assert sorted(indexes) == [
        ["field-path=flow,order=ascending", newest_first],
        ["field-path=parent.execution_id,order=ascending", newest_first],
        ["field-path=status,order=ascending", "field-path=flow,order=ascending", newest_first],
        ["field-path=status,order=ascending", newest_first],
        ["field-path=status,order=ascending", "field-path=wake_at,order=ascending"],
    ]
    exempt = {
        (args[7], flag(args, "--collection-group"))
        for args in result.commands()
        if args[3:7] == ["firestore", "indexes", "fields", "update"]
    }
    queried = {"status", "flow", "requested_at", "cancel_requested", "wake_at", "parent"}
    head = set(HEAD_FIELDS) - queried
    assert exempt == {(field, "ml-orchestrator-executions") for field in head} | {
        ("data", "execution-parts"),
        ("expire_at", "execution-parts"),
        ("end", "execution-ends"),  # counted by `wait` only
        ("expire_at", "execution-ends"),
    } | {
        (field, "ml-orchestrator-executions-cache") for field in ("output", "made_by", "expire_at")
    } | {
        ("holders", "ml-orchestrator-executions-limits"),
        ("source", "ml-orchestrator-executions-flows"),
    }


def test_setup_dry_run_prints_and_changes_nothing(workdir: Path) -> None:
    result = run(workdir, "infra/setup.sh", "proj", "us-east1", "--dry-run")
    assert result.code == 0, result.err
    assert mutations(result) == []
    assert "pubsub subscriptions create ml-orchestrator-push" in result.out
    assert "--push-auth-token-audience " + URL in result.out
    assert list((workdir / "state").iterdir()) == []


def write_env_vars(workdir: Path, text: str = ENV_VARS) -> None:
    (workdir / "repo" / "env-vars.yaml").write_text(text)


def test_deploy_builds_deploys_authenticated_and_grants_the_push_identity(workdir: Path) -> None:
    write_env_vars(workdir)
    result = run(workdir, "scripts/deploy.sh", "proj", "us-east1")
    assert result.code == 0, result.err
    build = result.command("builds", "submit")
    image = flag(build, "--tag")
    assert image.startswith("us-east1-docker.pkg.dev/proj/ml-orchestrator/ml-orchestrator:")
    deploy = result.command("run", "deploy", "ml-orchestrator")
    assert flag(deploy, "--image") == image
    assert flag(deploy, "--timeout") == "600"
    assert flag(deploy, "--service-account") == "ml-orchestrator@proj.iam.gserviceaccount.com"
    assert (flag(deploy, "--memory"), flag(deploy, "--cpu")) == ("2Gi", "2")
    assert (flag(deploy, "--min-instances"), flag(deploy, "--max-instances")) == ("1", "100")
    assert "--no-allow-unauthenticated" in deploy
    assert "--allow-unauthenticated" not in deploy
    [call] = [c for c in result.calls if "env_vars_file" in c]
    settings = yaml.safe_load(call["env_vars_file"])  # type: ignore[arg-type]
    assert settings["DEFAULT_MATCH_CANDIDATO_URL"] == "https://fn.example/match"
    assert settings["PUSH_AUTH_AUDIENCE"] == URL
    assert settings["PUSH_AUTH_SERVICE_ACCOUNT"] == PUSH_ACCOUNT
    assert settings["GOOGLE_CLOUD_PROJECT"] == "proj"
    invoker = result.command("run", "services", "add-iam-policy-binding")
    assert flag(invoker, "--member") == f"serviceAccount:{PUSH_ACCOUNT}"
    assert flag(invoker, "--role") == "roles/run.invoker"


def test_deploy_is_public_only_when_asked(workdir: Path) -> None:
    write_env_vars(workdir)
    result = run(workdir, "scripts/deploy.sh", "proj", "us-east1", "svc", "--allow-unauthenticated")
    deploy = result.command("run", "deploy", "svc")
    assert "--allow-unauthenticated" in deploy and "--no-allow-unauthenticated" not in deploy


def test_deploy_keeps_settings_the_file_gives(workdir: Path) -> None:
    write_env_vars(workdir, ENV_VARS + "PUSH_AUTH_AUDIENCE: 'https://custom.example'\n")
    result = run(workdir, "scripts/deploy.sh", "proj", "us-east1", "--image", "img:1")
    assert result.commands() and not [a for a in result.commands() if "builds" in a]
    [call] = [c for c in result.calls if "env_vars_file" in c]
    assert yaml.safe_load(call["env_vars_file"])["PUSH_AUTH_AUDIENCE"] == "https://custom.example"  # type: ignore[arg-type]


def test_deploy_dry_run_prints_the_exact_commands(workdir: Path) -> None:
    write_env_vars(workdir)
    result = run(workdir, "scripts/deploy.sh", "proj", "us-east1", "--dry-run")
    assert result.code == 0, result.err
    assert mutations(result) == []
    assert (
        "gcloud --project proj --quiet run deploy ml-orchestrator --region us-east1" in result.out
    )
    assert "--no-allow-unauthenticated" in result.out


@pytest.mark.parametrize(
    ("args", "env_vars", "message"),
    [
        ((), ENV_VARS, "PROJECT and REGION are required"),
        (("proj",), ENV_VARS, "PROJECT and REGION are required"),
        (("proj", "us-east1"), None, "no env-vars.yaml"),
        (
            ("proj", "us-east1"),
            ENV_VARS.replace("https://fn.example/match", ""),
            "DEFAULT_MATCH_CANDIDATO_URL must be set",
        ),
        (("proj", "us-east1", "--bogus"), ENV_VARS, "unknown option --bogus"),
    ],
)
def test_deploy_explains_what_is_missing(
    workdir: Path, args: tuple[str, ...], env_vars: str | None, message: str
) -> None:
    if env_vars is not None:
        write_env_vars(workdir, env_vars)
    result = run(workdir, "scripts/deploy.sh", *args)
    assert result.code == 2
    assert message in result.err
    assert mutations(result) == []


@pytest.mark.parametrize("script", ["scripts/deploy.sh", "infra/setup.sh", "scripts/rollback.sh"])
def test_a_missing_gcloud_is_named(workdir: Path, script: str) -> None:
    write_env_vars(workdir)
    bin_dir = workdir / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "sed", "grep", "cat", "mktemp", "cp", "rm", "date", "git"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    result = run(workdir, script, "proj", "us-east1", path=str(bin_dir))
    assert result.code == 2
    assert "gcloud is not installed" in result.err


def test_deploy_with_env_converts_dot_env(workdir: Path) -> None:
    (workdir / "repo" / ".env").write_text(
        "# settings\n"
        "DEFAULT_CREATE_USER_EMBEDDINGS_URL=https://fn.example/e?a=1&b=2#frag\n"
        "DEFAULT_PROFESSION_ORCHESTRATOR_URL=https://fn.example/p\n"
        'DEFAULT_MATCH_CANDIDATO_URL="https://fn.example/m"\n'
        "DEFAULT_MATCH_ANALYSIS_USER_VACANCY_URL=https://fn.example/x # the analysis\n"
        "WEBHOOK_SECRET=whsec_abc=\n"
    )
    result = run(workdir, "scripts/deploy-with-env.sh", "proj", "us-east1")
    assert result.code == 0, result.err
    [call] = [c for c in result.calls if "env_vars_file" in c]
    settings = yaml.safe_load(call["env_vars_file"])  # type: ignore[arg-type]
    assert settings["DEFAULT_CREATE_USER_EMBEDDINGS_URL"] == "https://fn.example/e?a=1&b=2#frag"
    assert settings["DEFAULT_MATCH_CANDIDATO_URL"] == "https://fn.example/m"
    assert settings["DEFAULT_MATCH_ANALYSIS_USER_VACANCY_URL"] == "https://fn.example/x"
    assert settings["WEBHOOK_SECRET"] == "whsec_abc="


def test_env_to_cloudrun_quotes_survive_yaml(workdir: Path) -> None:
    values = {
        "URL": "https://x.run.app/a?b=c&d=e#f",
        "EQUALS": "a=b=c",
        "HASH": "#not-a-comment",
        "COLON": "key: value",
        "APOSTROPHE": "it's",
        "SPACES": "two words",
        "EMPTY": "",
    }
    lines = [f"{k}={v}" if k not in {"HASH", "SPACES"} else f'{k}="{v}"' for k, v in values.items()]
    (workdir / "repo" / ".env").write_text("\n".join(lines) + "\n")
    result = run(workdir, "scripts/env-to-cloudrun.sh")
    assert result.code == 0, result.err
    assert yaml.safe_load(result.out) == values


def test_env_to_cloudrun_names_a_bad_line(workdir: Path) -> None:
    (workdir / "repo" / ".env").write_text("GOOD=1\nthis is not a setting\n")
    result = run(workdir, "scripts/env-to-cloudrun.sh")
    assert result.code == 2
    assert ".env line 2: expected NAME=value" in result.err


def test_build_local_builds_and_runs_with_the_env_file(workdir: Path) -> None:
    (workdir / "repo" / ".env").write_text("ML_AUTH=none\n")
    result = run(workdir, "scripts/build-local.sh", ENV_FILE=str(workdir / "repo" / ".env"))
    assert result.code == 0, result.err
    build, start = result.commands("docker")
    assert build[:3] == ["build", "--tag", "ml-orchestrator:local"]
    assert start[:2] == ["run", "--rm"]
    assert flag(start, "--env-file") == str(workdir / "repo" / ".env")
    assert flag(start, "--publish") == "8080:8080"


def test_rollback_goes_to_the_previous_revision(workdir: Path) -> None:
    result = run(workdir, "scripts/rollback.sh", "proj", "us-east1")
    assert result.code == 0, result.err
    update = result.command("update-traffic")
    assert flag(update, "--to-revisions") == "ml-orchestrator-00002-old=100"
    named = run(workdir, "scripts/rollback.sh", "proj", "us-east1", "ml-orchestrator", "rev-7")
    assert flag(named.command("update-traffic"), "--to-revisions") == "rev-7=100"


def test_backup_then_restore(workdir: Path) -> None:
    backup = run(
        workdir, "scripts/backup-config.sh", "proj", "us-east1", "ml-orchestrator", "saved.yaml"
    )
    assert backup.code == 0, backup.err
    saved = workdir / "repo" / "saved.yaml"
    assert yaml.safe_load(saved.read_text())["kind"] == "Service"
    restore = run(workdir, "scripts/restore-config.sh", "proj", "us-east1", "saved.yaml")
    assert restore.code == 0, restore.err
    replace = restore.command("services", "replace")
    assert "saved.yaml" in replace and flag(replace, "--region") == "us-east1"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_has_help(workdir: Path, script: Path) -> None:
    result = run(workdir, str(script.relative_to(ROOT)), "--help")
    assert result.code == 0
    assert "Usage:" in result.out or "Runs" in result.out or "Converts" in result.out
    assert result.calls == []


def test_scripts_are_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    files = [
        *SCRIPTS,
        ROOT / "scripts" / "lib" / "common.sh",
        ROOT / "scripts" / "lib" / "venv.sh",
        ROOT / ".ci" / "run",
    ]
    done = subprocess.run(
        [shellcheck, "-x", *map(str, files)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout


def test_setup_installs_the_monitoring_dashboard_once(workdir: Path) -> None:
    first = run(workdir, "infra/setup.sh", "proj", "us-east1", "--monitoring")
    second = run(workdir, "infra/setup.sh", "proj", "us-east1", "--monitoring")
    assert first.code == second.code == 0, second.err
    [created] = [
        args for args in first.commands() if args[3:6] == ["monitoring", "dashboards", "create"]
    ]
    assert flag(created, "--config-from-file").endswith("infra/dashboard.json")
    assert [a for a in second.commands() if a[3:6] == ["monitoring", "dashboards", "create"]] == []


def test_the_dashboard_and_alerts_chart_the_service_s_metrics() -> None:
    """Every metric a chart or an alert reads is one the service exports."""
    from service.metrics import Metrics

    m = Metrics()
    instruments = (
        m.executions,
        m.execution_duration,
        m.step_duration,
        m.ml_calls,
        m.webhook_deliveries,
        m.in_flight,
        m.frontdoor_requests,
        m.shadows,
        m.shadow_duration,
        m.triggers,
    )
    exported = {instrument.name for instrument in instruments}
    for file in ("dashboard.json", "alert-executions-failing.json", "alert-webhooks-failing.json"):
        text = (ROOT / "infra" / file).read_text()
        read = set(re.findall(r"workload.googleapis.com/(\w+)", text))
        assert read and read <= exported, file
