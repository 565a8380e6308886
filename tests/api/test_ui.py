"""The dashboard in a real browser: Debian's chromium driven by Playwright.

The service runs with the in-process transport, stand-in functions and a webhook
receiver on loopback; the pages are used as an operator would: list, filter, open
an execution, read its timeline, press re-drive and confirm.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from service.app import create_app
from service.dev.emulator import free_port
from service.dev.servers import serve
from service.dev.standins import StandIns, WebhookReceiver
from service.engine.flow import load_flows
from service.engine.triggers import execution_id
from service.settings import PROJECT_FLOWS_DIR
from tests.support.project import WEBHOOK_SECRET, full_seed, make_settings, project_flows

# Drives Debian's chromium: the full tier only (`./scripts/test.sh`).
pytestmark = pytest.mark.browser

HOSTILE = '<script>window.pwned = true</script><img src=x onerror="window.pwned = true">'


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is not installed: scripts/test.sh installs it (apt)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield launched
        launched.close()


@dataclass
class Dashboard:
    url: str
    functions: StandIns
    webhook_url: str

    def run(self, **overrides: Any) -> str:
        body = full_seed(webhook_url=self.webhook_url, **overrides)
        execution_id: str = httpx.post(f"{self.url}/orchestrate", json=body).json()["execution_id"]
        deadline = time.monotonic() + 20
        while httpx.get(f"{self.url}/executions/{execution_id}").json()["status"] in {
            "queued",
            "running",
        }:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        return execution_id


@pytest.fixture
def dashboard() -> Iterator[Dashboard]:
    functions = StandIns(delay_s=0.05, vacancies=4)
    webhook = WebhookReceiver(WEBHOOK_SECRET)
    with serve(functions.app()) as functions_url, serve(webhook.app()) as webhook_url:
        app = create_app(
            make_settings(webhook_allow_private_networks=True), project_flows(functions_url)
        )
        with serve(app) as url:
            yield Dashboard(url, functions, f"{webhook_url}/hook")


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )
    yield opened
    context.close()
    assert errors == [], "the page logged errors"


def test_an_operator_finds_a_failure_reads_its_timeline_and_re_drives_it(
    dashboard: Dashboard, page: Page, tmp_path: Path
) -> None:
    succeeded = dashboard.run()
    dashboard.functions.script["/match-candidato"] = [400]
    # Held back until the profession orchestrator (in parallel) has long answered, so that
    # the failure sets the execution's duration: its critical path, drawn below.
    held = dashboard.functions.gates["/match-candidato"] = threading.Event()
    threading.Timer(0.3, held.set).start()
    failed = dashboard.run()
    del dashboard.functions.gates["/match-candidato"]

    page.goto(f"{dashboard.url}/ui/")
    expect(page.locator("#executions tbody tr")).to_have_count(2)
    page.get_by_label("failed").check()
    expect(page.locator("#executions tbody tr")).to_have_count(1)
    expect(page.locator(f'tr[data-id="{succeeded}"]')).to_have_count(0)
    assert "status=failed" in page.url  # the filter is in the address, to share it

    started = time.perf_counter()
    page.get_by_role("link", name=failed).click()
    expect(page.locator("#timeline .row")).to_have_count(4)
    loaded_ms = (time.perf_counter() - started) * 1000
    print(f"\nexecution page: timeline drawn {loaded_ms:.0f} ms after the click")
    expect(page.locator("#facts")).to_contain_text("failed")
    expect(page.locator(".dag .node")).to_have_count(4)
    expect(page.locator('.dag .node.critical[data-step="match_candidato"]')).to_have_count(1)
    expect(page.locator("#timeline .bar.critical")).not_to_have_count(0)
    expect(page.locator('details.step[data-step="match_candidato"]')).to_contain_text("HTTP 400")
    expect(page.locator("#result")).to_have_text(
        "none: made when the execution succeeds or is partial"
    )

    page.get_by_role("button", name="Re-drive").click()
    expect(page.locator("#question")).to_contain_text("Re-drive this execution?")
    page.get_by_role("button", name="Yes").click()
    expect(page.locator("#notice")).to_have_text("run 2 queued")
    expect(page.locator("#facts")).to_contain_text("succeeded", timeout=15_000)
    expect(page.locator("#timeline .row.item")).to_have_count(4)
    expect(page.locator("#result")).to_contain_text('"vacancy_id": "v4"')  # the flow's result
    page.screenshot(path=tmp_path / "execution.png", full_page=True)
    document = httpx.get(f"{dashboard.url}/executions/{failed}").json()
    assert (document["status"], document["run"]) == ("succeeded", 2)


def test_untrusted_outputs_render_as_text(dashboard: Dashboard, page: Page) -> None:
    dashboard.functions.extra["/profession-orchestrator"] = {"note": HOSTILE}
    execution_id = dashboard.run(user_id=HOSTILE[:40])
    page.goto(f"{dashboard.url}/ui/executions/{execution_id}")
    step = page.locator('details.step[data-step="profession_orchestrator"]')
    step.locator("summary").click()
    expect(step.locator("pre.output")).to_contain_text("<script>window.pwned = true</script>")
    expect(page.locator("#input")).to_contain_text("<script>")
    expect(page.locator("#result")).to_contain_text("<script>window.pwned = true</script>")
    assert page.evaluate("window.pwned") is None
    assert page.locator("main script, main img").count() == 0


def test_the_pages_go_out_under_a_strict_content_security_policy(dashboard: Dashboard) -> None:
    for path in ("/ui/", "/ui/executions/x"):
        response = httpx.get(f"{dashboard.url}{path}")
        assert response.status_code == 200
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy
        assert "http" not in policy  # nothing from another origin, no CDN
    assert httpx.get(f"{dashboard.url}/ui", follow_redirects=True).url.path == "/ui/"


def test_a_waiting_execution_shows_what_it_waits_for_until_its_callback(
    browser: Browser, page: Page
) -> None:
    """The example flow of waits: the page shows the review step waiting for its callback
    and when it wakes, then follows the execution to its end once the reviewer answers."""
    functions = StandIns(job_s=0.2, review_s=None)
    port = free_port()
    with serve(functions.app()) as functions_url:
        examples = load_flows(PROJECT_FLOWS_DIR / "examples", functions.env(functions_url))
        example = examples["batch-review"]
        fast_poll = replace(example.steps["start_batch"].poll, every_s=0.2, max_every_s=0.2)
        steps = {
            **example.steps,
            "start_batch": replace(example.steps["start_batch"], poll=fast_poll),
        }
        flows = project_flows(functions_url) | {"batch-review": replace(example, steps=steps)}
        settings = make_settings(
            public_url=f"http://127.0.0.1:{port}", inline_wait_s=0, wake_interval_s=0.1
        )
        with serve(create_app(settings, flows), port=port) as url:
            body = {"flow": "batch-review", "user_id": "u-ui"}
            execution_id = httpx.post(f"{url}/orchestrate", json=body).json()["execution_id"]
            page.goto(f"{url}/ui/executions/{execution_id}")
            expect(page.locator('.dag .node.waiting[data-step="review"]')).to_have_count(
                1, timeout=15_000
            )
            expect(page.locator("#facts")).to_contain_text("waiting")
            review = page.locator('details.step[data-step="review"]')
            review.locator("summary").click()
            expect(review.locator(".wait")).to_contain_text("waits for a callback · wakes")
            expect(page.locator("#timeline .bar.waiting")).to_have_count(1)
            [call] = functions.called("/review")
            answered = httpx.post(
                call.body["approve_url"], json={"approved": True, "reviewer": "ui"}
            )
            assert answered.status_code == 200
            expect(page.locator("#facts")).to_contain_text("succeeded", timeout=15_000)
            expect(page.locator('.dag .node.succeeded[data-step="publish"]')).to_have_count(1)


def test_a_parent_links_its_children_and_each_child_its_parent(
    browser: Browser, page: Page
) -> None:
    """The example of child flows: the parent's step counts its children by status and
    links each; a child's facts link back to its parent, the step and the item."""
    functions = StandIns(vacancies=3)
    with serve(functions.app()) as functions_url:
        flows = project_flows(functions_url) | load_flows(
            PROJECT_FLOWS_DIR / "examples", functions.env(functions_url)
        )
        with serve(create_app(make_settings(), flows)) as url:
            body = {"flow": "score-vacancies", "user_id": "u-ui"}
            parent = httpx.post(f"{url}/orchestrate", json=body).json()["execution_id"]
            page.goto(f"{url}/ui/executions/{parent}")
            expect(page.locator("#facts")).to_contain_text("succeeded", timeout=15_000)
            step = page.locator('details.step[data-step="score_vacancies"]')
            step.locator("summary").click()
            expect(step.locator(".children")).to_contain_text("child executions: 3 succeeded")
            links = step.locator(".children a")
            expect(links).to_have_count(3)
            first = links.first.inner_text()
            links.first.click()
            expect(page.locator("#execution-id")).to_contain_text(first)
            expect(page.locator("#facts .parent")).to_contain_text(
                f"{parent} (step score_vacancies, item 0)"
            )
            page.locator("#facts .parent a").click()
            expect(page.locator("#execution-id")).to_contain_text(parent)


def test_an_execution_started_by_an_event_shows_its_trigger(browser: Browser, page: Page) -> None:
    """The example flow's trigger: a Cloud Storage notification pushed to it starts an
    execution whose facts name the trigger and its topic, beside the flow's triggers; the
    list says which executions an event started."""
    functions = StandIns(vacancies=1)
    with serve(functions.app()) as functions_url:
        flows = project_flows(functions_url) | load_flows(
            PROJECT_FLOWS_DIR / "examples", functions.env(functions_url)
        )
        with serve(create_app(make_settings(), flows)) as url:
            data = {"name": "exports/u-ui.json", "metadata": {"user_id": "u-ui"}}
            attributes = {
                "eventType": "OBJECT_FINALIZE",
                "bucketId": "exports",
                "objectId": "exports/u-ui.json",
            }
            message = {
                "data": base64.b64encode(json.dumps(data).encode()).decode(),
                "attributes": attributes,
                "messageId": "ui-1",
            }
            pushed = httpx.post(
                f"{url}/pubsub/events/score-vacancies/user-export",
                json={"message": message, "subscription": "projects/p/subscriptions/s"},
            )
            assert pushed.status_code == 204, pushed.text
            started = execution_id("score-vacancies", "user-export", "ui-1")
            page.goto(f"{url}/ui/executions/{started}")
            facts = page.locator("#facts")
            expect(facts).to_contain_text("succeeded", timeout=15_000)
            for term in ("Trigger", "Flow's triggers"):
                fact = facts.locator("dt", has_text=re.compile(f"^{term}$")).locator("+ dd")
                expect(fact).to_have_text("user-export ← topic vacancy-exports")
            hover = facts.locator(".trigger").first.get_attribute("title") or ""
            assert hover.startswith('when ${event.attributes.eventType == "OBJECT_FINALIZE"')
            page.goto(f"{url}/ui/?flow=score-vacancies")
            row = page.locator(f'tr[data-id="{started}"]')
            expect(row).to_contain_text("score-vacancies · trigger user-export")


ROLLOUT = """
input:
  user_id: {type: string, required: true}
steps:
  match:
    call: PRIMARY/match-candidato
    body: {user_id: "${input.user_id}"}
    shadow: {call: CANDIDATE/match-candidato}
  analyse:
    after: [match]
    call: PRIMARY/match-analysis-user-vacancy
    for_each: ${steps.match.output.vacancies.map(v, v.vacancy_id)}
    body: {user_id: "${input.user_id}", vacancy_id: "${item}"}
    shadow: {call: CANDIDATE/match-analysis-user-vacancy}
"""


def test_an_operator_reads_a_rollout_replays_it_and_compares(
    browser: Browser, page: Page, tmp_path: Path
) -> None:
    """The candidate ranks a vacancy more and scores fits lower: each step's shadow is
    drawn beside its answer with the differences marked, the flow's agreement per step
    above; a replay after the model changed is compared with its original."""
    primary, candidate = StandIns(), StandIns(vacancies=4)
    candidate.extra["/match-analysis-user-vacancy"] = {"fit": 0.6}
    with serve(primary.app()) as primary_url, serve(candidate.app()) as candidate_url:
        path = tmp_path / "rollout.yaml"
        path.write_text(ROLLOUT.replace("PRIMARY", primary_url).replace("CANDIDATE", candidate_url))
        flows = project_flows(primary_url) | {"rollout": load_flows(tmp_path, {})["rollout"]}
        with serve(create_app(make_settings(), flows)) as url:
            ids = []
            for user in ("u-1", "u-2"):
                body = {"flow": "rollout", "user_id": user}
                ids.append(httpx.post(f"{url}/orchestrate", json=body).json()["execution_id"])

            def shadowed(execution_id: str) -> bool:
                steps = httpx.get(f"{url}/executions/{execution_id}").json()["steps"]
                return all(
                    steps.get(n, {}).get("items" if n == "analyse" else "shadow")
                    for n in ("match", "analyse")
                ) and all(item["shadow"] for item in steps["analyse"]["items"])

            deadline = time.monotonic() + 15
            while not all(shadowed(i) for i in ids):
                assert time.monotonic() < deadline, "shadows not recorded"
                time.sleep(0.05)

            page.goto(f"{url}/ui/executions/{ids[0]}")
            expect(page.locator("#facts")).to_contain_text("succeeded")
            row = page.locator('#agreement tr[data-step="match"]')
            expect(row.locator(".agreement")).to_have_text("0.0 %")
            expect(row).to_contain_text("0 / 2 / 0")
            expect(page.locator('#agreement tr[data-step="analyse"]')).to_contain_text("0 / 6 / 0")
            step = page.locator('details.step[data-step="match"]')
            step.locator("summary").click()
            shadow = step.locator('[data-shadow="match"]')
            expect(shadow).to_contain_text("disagrees")
            expect(shadow).to_contain_text("differs at /vacancies/3")
            expect(shadow.locator(".sides pre").nth(1).locator(".line.differs")).not_to_have_count(
                0
            )
            items = page.locator('details.step[data-step="analyse"]')
            items.locator("summary").click()
            expect(items).to_contain_text("shadows: 0 of 3 items agree")
            expect(items.locator(".line.differs")).not_to_have_count(0)
            page.screenshot(path=tmp_path / "rollout.png", full_page=True)

            primary.vacancies = 4  # the new model is deployed: replay last week's executions
            page.get_by_role("button", name="Replay").click()
            page.get_by_role("button", name="Yes").click()
            link = page.locator("#notice a")
            expect(link).to_have_count(1)
            link.click()
            expect(page.locator("#facts")).to_contain_text("succeeded", timeout=15_000)
            page.locator("#facts .replay-of").get_by_role("link", name="compare").click()
            expect(page.locator("#summary")).to_contain_text("different")
            match = page.locator('#compared details.step[data-step="match"]')
            expect(match).to_contain_text("differs at /vacancies/3")
            expect(match.locator(".line.differs")).not_to_have_count(0)
            page.screenshot(path=tmp_path / "compare.png", full_page=True)
