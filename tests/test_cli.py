"""The command line: validate, graph (checked by Mermaid's own parser), run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.dev.servers import serve
from service.dev.standins import StandIns
from service.engine.flow import load_flows
from service.engine.graph import mermaid

# Starts processes or tools (or fuzzes): the full tier only (`./scripts/test.sh`).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
MERMAID = ROOT / "tests" / "support" / "mermaid"
URLS = {
    "DEFAULT_CREATE_USER_EMBEDDINGS_URL": "https://fn.example/e",
    "DEFAULT_PROFESSION_ORCHESTRATOR_URL": "https://fn.example/p",
    "DEFAULT_MATCH_CANDIDATO_URL": "https://fn.example/m",
    "DEFAULT_MATCH_ANALYSIS_USER_VACANCY_URL": "https://fn.example/a",
}


def cli(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DEFAULT_", "PUBSUB_", "GOOGLE_CLOUD"))
    }
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env={**clean, "PYTHONPATH": str(ROOT), **URLS, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_validate_reports_every_flow(tmp_path: Path) -> None:
    result = cli("validate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ok: flow ml-orchestration: 4 steps" in result.stdout


def test_validate_fails_on_a_broken_flow_naming_file_and_step(tmp_path: Path) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "ml-orchestration.yaml").write_text(
        "steps:\n  a: {call: 'https://x'}\n"
        "  b: {call: 'https://x', body: {v: '${steps.a.output}'}}\n"
    )
    result = cli("validate", cwd=tmp_path, FLOWS_DIR=str(flows))
    assert result.returncode == 2
    assert f"{flows / 'ml-orchestration.yaml'}, step 'b'" in result.stderr
    assert "not in 'after'" in result.stderr


def mermaid_parse(text: str) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    if node is None or not (MERMAID / "node_modules").is_dir():
        pytest.fail(
            "Mermaid's parser is not installed: run scripts/test.sh (needs Node.js and npm)"
        )
    return subprocess.run(
        [node, "parse.mjs"], input=text, cwd=MERMAID, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("flow", sorted(p.stem for p in (ROOT / "flows").glob("*.yaml")))
def test_graph_is_valid_mermaid_for_every_flow(flow: str, tmp_path: Path) -> None:
    result = cli("graph", flow, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    parsed = mermaid_parse(result.stdout)
    assert parsed.returncode == 0, parsed.stdout
    assert parsed.stdout.strip() == "flowchart-v2"


def test_mermaid_parser_refuses_broken_text() -> None:
    """The check above can fail: a broken diagram is refused."""
    assert mermaid_parse('flowchart LR\n  a["unclosed --> b\n').returncode == 1


def test_the_flows_page_shows_the_default_flow_as_graph_prints_it(tmp_path: Path) -> None:
    result = cli("graph", "ml-orchestration", cwd=tmp_path)
    page = (ROOT / "docs" / "flows.md").read_text()
    assert f"```mermaid\n{result.stdout}```" in page


def test_the_flows_page_shows_the_example_of_waits_as_its_graph() -> None:
    """docs/flows.md draws flows/examples/batch-review.yaml as `mermaid` makes it, and
    Mermaid parses it."""
    example = load_flows(ROOT / "flows" / "examples", StandIns().env("https://fn.example"))
    drawn = mermaid(example["batch-review"])
    assert "polls until ${response.done}" in drawn and "waits for a callback" in drawn
    assert f"```mermaid\n{drawn}```" in (ROOT / "docs" / "flows.md").read_text()
    assert mermaid_parse(drawn).returncode == 0


def test_graph_of_an_unknown_flow_is_an_error(tmp_path: Path) -> None:
    result = cli("graph", "nope", cwd=tmp_path)
    assert result.returncode == 2
    assert "no flow named 'nope'" in result.stderr


def test_run_executes_a_flow_against_the_functions(tmp_path: Path) -> None:
    functions = StandIns()
    with serve(functions.app()) as url:
        urls = functions.env(url)
        seed = {"user_id": "u", "session_id": "s", "process_vacancy_orchestrator": True}
        result = cli(
            "run",
            "ml-orchestration",
            "--input",
            json.dumps(seed),
            cwd=tmp_path,
            ML_AUTH="none",
            **urls,
        )
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        assert document["status"] == "succeeded"
        assert document["steps"]["match_analysis_user_vacancy"]["attempts"] == 3
        assert len(functions.calls) == 4
        functions.script["/match-candidato"] = [400]
        failed = cli(
            "run",
            "ml-orchestration",
            "--input",
            json.dumps(seed),
            cwd=tmp_path,
            ML_AUTH="none",
            **urls,
        )
        assert failed.returncode == 1
        assert json.loads(failed.stdout)["status"] == "failed"


def test_run_refuses_bad_input_naming_the_field(tmp_path: Path) -> None:
    result = cli("run", "ml-orchestration", "--input", '{"session_id": "s"}', cwd=tmp_path)
    assert result.returncode == 2
    assert "user_id: Field required" in result.stderr


def test_schedules_lists_what_the_flows_declare_without_their_environment(
    tmp_path: Path,
) -> None:
    folders = f"{ROOT / 'flows'}:{ROOT / 'flows' / 'examples'}"
    result = cli("schedules", cwd=tmp_path, FLOWS_DIR=folders)  # no BATCH_API_URL & co.
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "batch-review-nightly: '0 3 * * *' (Europe/Madrid) POST /orchestrate "
        '{"flow":"batch-review","user_id":"nightly-batch"}\n'
    )
    tsv = cli("schedules", "--tsv", cwd=tmp_path, FLOWS_DIR=folders).stdout
    assert tsv.split("\t") == [
        "batch-review-nightly",
        "0 3 * * *",
        "Europe/Madrid",
        '{"flow":"batch-review","user_id":"nightly-batch"}\n',
    ]
    assert cli("schedules", cwd=tmp_path).stdout == "no flow declares schedules\n"


def test_schedules_need_no_other_setting_than_the_flows_folder(tmp_path: Path) -> None:
    """A shell set up for the emulator (PUBSUB_EMULATOR_HOST, no project) still lists them:
    infra/setup.sh --schedules runs from any shell."""
    folders = f"{ROOT / 'flows'}:{ROOT / 'flows' / 'examples'}"
    result = cli("schedules", cwd=tmp_path, FLOWS_DIR=folders, PUBSUB_EMULATOR_HOST="x:1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("batch-review-nightly: ")


def test_triggers_list_what_the_flows_declare_without_their_environment(tmp_path: Path) -> None:
    folders = f"{ROOT / 'flows'}:{ROOT / 'flows' / 'examples'}"
    result = cli("triggers", cwd=tmp_path, FLOWS_DIR=folders, PUBSUB_EMULATOR_HOST="x:1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "score-vacancies-user-export: topic vacancy-exports → "
        "POST /pubsub/events/score-vacancies/user-export\n"
    )
    tsv = cli("triggers", "--tsv", cwd=tmp_path, FLOWS_DIR=folders).stdout
    assert tsv == (
        "score-vacancies-user-export\tvacancy-exports\t/pubsub/events/score-vacancies/user-export\n"
    )
    assert cli("triggers", cwd=tmp_path).stdout == "no flow declares triggers\n"
