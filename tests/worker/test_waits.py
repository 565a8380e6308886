"""Steps that wait, end to end on one instance: the service (in-process transport, memory
store) on loopback, calling the stand-ins' batch API and reviewer over HTTP.

INLINE_WAIT_S=0 makes every wait suspend the execution; the service's own timer
(WAKE_INTERVAL_S) or a callback resumes it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.backends.answers import Answer
from service.backends.memory import MemoryStore
from service.backends.store import ExecutionStore
from service.callback_tokens import CallbackToken, new_callback_token, read_callback_token
from service.dev.emulator import free_port
from service.dev.servers import serve
from service.dev.standins import StandIns, WebhookReceiver
from service.durations import duration_s
from service.errors import FlowError, StoreUnavailable
from service.execution import Execution
from service.settings import PROJECT_FLOWS_DIR
from tests.support.project import WEBHOOK_SECRET, make_settings
from tests.support.waits import until

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "flows" / "examples"

FAST_BATCH = """
input:
  user_id: {type: string, required: true}
steps:
  start_batch:
    call: ${env.BATCH_API_URL}/batchPredictionJobs
    auth: access_token
    body: {displayName: "${input.user_id}"}
    poll:
      url: ${env.BATCH_API_URL}/${response.name}
      every: 200ms
      max_every: 400ms
      timeout: TIMEOUT
    output: ${response.response}
  after_batch:
    after: [start_batch]
    call: ${env.PUBLISH_URL}
    body: {user_id: "${input.user_id}", uri: "${steps.start_batch.output.outputUri}"}
"""

REVIEW = """
input:
  user_id: {type: string, required: true}
  version: {type: integer, default: 1}
steps:
  review:
    call: ${env.REVIEW_URL}
    body: {user_id: "${input.user_id}", approve_url: "${callback.url}"}
    callback: {timeout: TIMEOUT}
  publish:
    after: [review]
    call: ${env.PUBLISH_URL}
    body: {user_id: "${input.user_id}", reviewer: "${steps.review.output.reviewer}"}
"""

NAP = """
input:
  user_id: {type: string, required: true}
steps:
  first:
    call: ${env.PUBLISH_URL}
    body: {user_id: "${input.user_id}", at: first}
  nap:
    after: [first]
    sleep: NAP
  second:
    after: [nap]
    call: ${env.PUBLISH_URL}
    body: {user_id: "${input.user_id}", at: second}
"""


TWO_REVIEWS = """
input:
  user_id: {type: string, required: true}
steps:
  legal:
    call: ${env.REVIEW_URL}
    body: {user_id: "${input.user_id}", approve_url: "${callback.url}"}
    callback: {timeout: 1h}
  product:
    call: ${env.REVIEW_URL}
    body: {user_id: "${input.user_id}", approve_url: "${callback.url}"}
    callback: {timeout: 1h}
  publish:
    after: [legal, product]
    call: ${env.PUBLISH_URL}
    body:
      user_id: ${input.user_id}
      reviewers: ${[steps.legal.output.reviewer, steps.product.output.reviewer]}
"""


@dataclass
class Stack:
    url: str
    functions: StandIns
    webhook: WebhookReceiver
    webhook_url: str
    store: ExecutionStore
    client: httpx.Client

    def start(self, flow: str, **fields: Any) -> str:
        body = {"flow": flow, "user_id": "u1", "webhook_url": self.webhook_url, **fields}
        response = self.client.post("/orchestrate", json=body)
        assert response.status_code == 202, response.text
        execution_id: str = response.json()["execution_id"]
        return execution_id

    def document(self, execution_id: str) -> dict[str, Any]:
        response = self.client.get(f"/executions/{execution_id}")
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document

    def reaches(self, execution_id: str, status: str, timeout_s: float = 10) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def there() -> bool:
            seen.update(self.document(execution_id))
            return seen["status"] == status

        until(there, timeout_s, lambda: f"{execution_id} never {status}, last: {seen}")
        return seen

    def calls(self, path: str) -> list[Any]:
        return [call.body for call in self.functions.called(path)]

    def callback_url(self, index: int = 0) -> str:
        until(lambda: len(self.calls("/review")) > index, 10, "the reviewer was not called")
        url: str = self.calls("/review")[index]["approve_url"]
        return url

    def delivered(self, execution_id: str) -> list[dict[str, Any]]:
        return [d for d in self.webhook.documents() if d["execution_id"] == execution_id]


@contextmanager
def running(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    flows: dict[str, str],
    functions: StandIns | None = None,
    store: ExecutionStore | None = None,
    **settings: Any,
) -> Iterator[Stack]:
    """The service with `flows` (name -> YAML) beside the project's, and the stand-ins;
    `settings` over INLINE_WAIT_S=0 (every wait suspends) and a 0.1 s timer."""
    folder = tmp_path / f"flows-{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    for name, text in flows.items():
        (folder / f"{name}.yaml").write_text(text)
    functions = functions or StandIns(job_s=0.5, review_s=None)
    webhook = WebhookReceiver(WEBHOOK_SECRET)
    port = free_port()
    with serve(functions.app(webhook)) as functions_url:
        for name, value in functions.env(functions_url).items():
            monkeypatch.setenv(name, value)  # what the flows' ${env.NAME} read
        config = make_settings(
            flows_dir=(PROJECT_FLOWS_DIR, folder) if flows else PROJECT_FLOWS_DIR,
            public_url=f"http://127.0.0.1:{port}",
            webhook_allow_private_networks=True,
            **{"inline_wait_s": 0, "wake_interval_s": 0.1, **settings},
        )
        kept = store or MemoryStore()
        app = create_app(config, store=kept)
        with serve(app, port=port) as url, httpx.Client(base_url=url, timeout=30) as client:
            yield Stack(url, functions, webhook, f"{functions_url}/hook", kept, client)


def _with(text: str, **values: str) -> str:
    for name, value in values.items():
        text = text.replace(name, value)
    return text


def test_a_sleep_suspends_the_execution_and_its_timer_resumes_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with running(monkeypatch, tmp_path, {"nap": _with(NAP, NAP="1s")}) as stack:
        execution_id = stack.start("nap")
        waiting = stack.reaches(execution_id, "waiting")
        nap = waiting["steps"]["nap"]
        assert nap["status"] == "waiting" and nap["wait"]["kind"] == "sleep"
        assert waiting["wake_at"] == nap["wake_at"]
        assert "second" not in waiting["steps"]  # the steps after a wait wait too
        listed = stack.client.get("/executions", params={"status": "waiting"}).json()
        assert [e["execution_id"] for e in listed["executions"]] == [execution_id]
        done = stack.reaches(execution_id, "succeeded")
        assert done["steps"]["nap"]["output"] is None
        assert done["steps"]["nap"]["duration_ms"] >= 1000
        assert [c["at"] for c in stack.calls("/publish-predictions")] == ["first", "second"]
        until(lambda: stack.delivered(execution_id), 5, "not delivered")
        assert [d["status"] for d in stack.delivered(execution_id)] == ["succeeded"]
        metrics = stack.client.get("/metrics").text
        assert 'orchestrator_waits_total{flow="nap",kind="sleep"} 1.0' in metrics
        assert 'orchestrator_wakes_total{outcome="woken"}' in metrics


def test_a_wait_within_inline_wait_s_stays_in_the_push(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with running(monkeypatch, tmp_path, {"nap": _with(NAP, NAP="300ms")}, inline_wait_s=5) as stack:
        execution_id = stack.start("nap")
        done = stack.reaches(execution_id, "succeeded")
        # Its end is a wall-clock moment, its duration timed by perf_counter: 1 ms apart.
        assert done["steps"]["nap"]["duration_ms"] >= 299
        assert "orchestrator_waits_total{" not in stack.client.get("/metrics").text


def test_a_long_running_operation_is_polled_until_done_then_the_flow_goes_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    flows = {"batch": _with(FAST_BATCH, TIMEOUT="1m")}
    with running(monkeypatch, tmp_path, flows, StandIns(job_s=0.8, review_s=None)) as stack:
        execution_id = stack.start("batch")
        waiting = stack.reaches(execution_id, "waiting")
        step = waiting["steps"]["start_batch"]
        assert step["wait"]["kind"] == "poll" and step["output"]["done"] is False
        done = stack.reaches(execution_id, "succeeded")
        output = done["steps"]["start_batch"]["output"]
        assert output == {"outputUri": "gs://demo/predictions/1", "count": 3}
        polls = [c for c in stack.functions.calls if c.path.startswith("/v1/projects/")]
        assert len(polls) >= 2  # at least one "not done" and the "done"
        assert stack.calls("/publish-predictions")[0]["uri"] == "gs://demo/predictions/1"


def test_an_operation_that_fails_fails_its_step_with_the_operation_s_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    functions = StandIns(job_s=0.3, failing_jobs=True, review_s=None)
    with running(
        monkeypatch, tmp_path, {"batch": _with(FAST_BATCH, TIMEOUT="1m")}, functions
    ) as stack:
        execution_id = stack.start("batch")
        failed = stack.reaches(execution_id, "failed")
        step = failed["steps"]["start_batch"]
        assert step["error"] == "the operation failed: the batch job ran out of quota"
        assert failed["steps"]["after_batch"]["status"] == "skipped"
        until(lambda: stack.delivered(execution_id), 5, "not delivered")


def test_an_operation_not_done_by_its_timeout_fails_its_step(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    functions = StandIns(job_s=3600, review_s=None)
    with running(
        monkeypatch, tmp_path, {"batch": _with(FAST_BATCH, TIMEOUT="1s")}, functions
    ) as stack:
        execution_id = stack.start("batch")
        failed = stack.reaches(execution_id, "failed")
        assert "not done within 1 s" in failed["steps"]["start_batch"]["error"]


def test_a_callback_resumes_the_execution_once_and_its_body_is_the_output(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with running(monkeypatch, tmp_path, {"review": _with(REVIEW, TIMEOUT="1h")}) as stack:
        execution_id = stack.start("review")
        url = stack.callback_url()
        assert url.startswith(f"{stack.url}/callbacks/")
        waiting = stack.reaches(execution_id, "waiting")
        assert waiting["steps"]["review"]["wait"]["kind"] == "callback"
        assert url.rsplit("/", 1)[1] not in str(waiting)  # the document never holds the token
        verdict = {"approved": True, "reviewer": "ana"}
        first = httpx.post(url, json=verdict)
        assert first.status_code == 200, first.text
        assert first.json() == {"execution_id": execution_id, "step": "review"}
        done = stack.reaches(execution_id, "succeeded")
        assert done["steps"]["review"]["output"] == verdict
        assert stack.calls("/publish-predictions")[0]["reviewer"] == "ana"
        again = httpx.post(url, json={"approved": False, "reviewer": "bob"})
        assert again.status_code == 409, again.text
        assert stack.document(execution_id)["steps"]["review"]["output"] == verdict


def test_a_callback_answered_before_its_call_returns_resumes_the_execution_at_once(
    store: ExecutionStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The reviewer posts its verdict before it answers the call that sent it the URL: the
    verdict is taken (the wait is stored before the call, on every store) and, with no
    timer running (WAKE_INTERVAL_S=0, as on Cloud Run), the run that suspends with it
    sends its own resume."""
    functions = StandIns(review_first=True)
    flows = {"review": _with(REVIEW, TIMEOUT="1h")}
    with running(monkeypatch, tmp_path, flows, functions, store=store, wake_interval_s=0) as stack:
        execution_id = stack.start("review")
        done = stack.reaches(execution_id, "succeeded")
    assert functions.reviewed == [200]
    assert done["steps"]["review"]["output"] == functions.review
    assert done["run"] == 1


def test_concurrent_answers_each_get_one_verdict_and_the_execution_resumes_at_once(
    store: ExecutionStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two waiting callbacks of one execution, each answered four times at once: per step
    one 200 and three 409 (never a 503 for a write that went in), and the execution goes
    on at once, with no timer running (WAKE_INTERVAL_S=0)."""
    functions = StandIns(review_s=None)
    with running(
        monkeypatch, tmp_path, {"two": TWO_REVIEWS}, functions, store=store, wake_interval_s=0
    ) as stack:
        execution_id = stack.start("two")
        urls = [stack.callback_url(0), stack.callback_url(1)]
        stack.reaches(execution_id, "waiting")
        posts = [(url, {"reviewer": f"r{n}"}) for url in urls for n in range(4)]
        with ThreadPoolExecutor(len(posts)) as pool:
            answers = list(pool.map(lambda p: httpx.post(p[0], json=p[1], timeout=20), posts))
        done = stack.reaches(execution_id, "succeeded")
    for url in urls:
        statuses = sorted(
            a.status_code for (u, _), a in zip(posts, answers, strict=True) if u == url
        )
        assert statuses == [200, 409, 409, 409], [a.text for a in answers]
    taken = {name: done["steps"][name]["output"]["reviewer"] for name in ("legal", "product")}
    assert stack.calls("/publish-predictions")[0]["reviewers"] == [taken["legal"], taken["product"]]


def test_forged_and_unknown_callback_tokens_answer_404(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with running(monkeypatch, tmp_path, {"review": _with(REVIEW, TIMEOUT="1h")}) as stack:
        execution_id = stack.start("review")
        token = stack.callback_url().rsplit("/", 1)[1]
        stack.reaches(execution_id, "waiting")
        head, secret = token.rsplit(".", 1)
        forged = f"{head}.{secret[:-4]}AAAA"
        other_step, _ = new_callback_token(execution_id, "publish", 1)
        for bad in (forged, other_step, "nonsense", "a" * 2000, f"{head}.short"):
            response = httpx.post(f"{stack.url}/callbacks/{bad}", json={})
            assert response.status_code == 404, (bad, response.text)
        assert stack.document(execution_id)["status"] == "waiting"
        refused = httpx.post(f"{stack.url}/callbacks/{token}", content=b"{not json")
        assert refused.status_code == 400
        big = httpx.post(
            f"{stack.url}/callbacks/{token}",
            content=b"x" * 10_000_001,
            headers={"Content-Type": "application/json"},
        )
        assert big.status_code == 413
        assert stack.document(execution_id)["status"] == "waiting"


def test_a_callback_after_its_timeout_is_gone_and_the_step_failed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with running(monkeypatch, tmp_path, {"review": _with(REVIEW, TIMEOUT="1s")}) as stack:
        execution_id = stack.start("review")
        url = stack.callback_url()
        failed = stack.reaches(execution_id, "failed")
        assert failed["steps"]["review"]["error"].startswith("no callback within")
        late = httpx.post(url, json={"approved": True})
        assert late.status_code == 410, late.text


def test_a_waiting_execution_is_cancelled_and_delivered_and_its_callback_is_gone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with running(monkeypatch, tmp_path, {"review": _with(REVIEW, TIMEOUT="1h")}) as stack:
        execution_id = stack.start("review")
        url = stack.callback_url()
        stack.reaches(execution_id, "waiting")
        refused = stack.client.post(f"/executions/{execution_id}/redrive")
        assert refused.status_code == 409  # waiting is not ended
        cancel = stack.client.post(f"/executions/{execution_id}/cancel")
        assert cancel.status_code == 202 and cancel.json()["status"] == "cancelling"
        cancelled = stack.reaches(execution_id, "cancelled")
        assert cancelled["steps"]["review"]["status"] == "cancelled"
        until(lambda: stack.delivered(execution_id), 5, "not delivered")
        assert stack.delivered(execution_id)[0]["status"] == "cancelled"
        assert httpx.post(url, json={"approved": True}).status_code == 410

        # Re-driven, the step calls again with a new callback URL, which resumes it.
        redriven = stack.client.post(f"/executions/{execution_id}/redrive")
        assert redriven.status_code == 202, redriven.text
        second = stack.callback_url(index=1)
        assert second != url
        stack.reaches(execution_id, "waiting")
        assert httpx.post(second, json={"approved": True, "reviewer": "c"}).status_code == 200
        done = stack.reaches(execution_id, "succeeded")
        assert done["run"] == 2


def test_the_example_flow_waits_for_its_batch_job_and_its_reviewer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """flows/examples/batch-review.yaml as the dev stack runs it, with a quicker job and
    reviewer: polled, called back, published."""
    functions = StandIns(job_s=0.5, review_s=0.5)
    example = (EXAMPLES / "batch-review.yaml").read_text().replace("every: 20s", "every: 300ms")
    with running(monkeypatch, tmp_path, {"batch-review-fast": example}, functions) as stack:
        execution_id = stack.start("batch-review-fast")
        done = stack.reaches(execution_id, "succeeded", timeout_s=20)
        assert done["steps"]["review"]["output"] == {"approved": True, "reviewer": "demo"}
        assert stack.calls("/publish-predictions")[0]["reviewer"] == "demo"


def test_waits_are_checked_when_the_flow_loads(tmp_path: Path) -> None:
    from service.engine.flow import load_flow

    cases = {
        "sleep: 31d": "steps.s.sleep: '31d': a wait is more than 0 and at most 30d",
        "sleep: 5 minutes": "is not a duration such as 500ms, 30s, 10m, 24h or 7d",
        "call: https://x.example\n    sleep: 1s": "a sleep step makes no call",
        "call: https://x.example\n    poll: {url: x}\n    callback: {}": "a step waits one way",
        "call: https://x.example\n    for_each: ${input.items}\n    callback: {}": (
            "a for_each step does not wait"
        ),
        "call: https://x.example\n    body: {u: '${callback.url}'}": "callback (its url) is only",
        "body: {}": "call: required (a URL), unless the step sleeps",
    }
    for n, (step, reason) in enumerate(cases.items()):
        path = tmp_path / f"f{n}.yaml"
        path.write_text(f"steps:\n  s:\n    {step}\n")
        with pytest.raises(FlowError, match=re.escape(reason)):
            load_flow(path, {})


def test_durations_and_tokens() -> None:
    assert [duration_s(text) for text in ("500ms", "30s", "10m", "24h", "7d", "30d", 2)] == [
        0.5,
        30,
        600,
        86_400,
        604_800,
        2_592_000,
        2.0,
    ]
    token, digest = new_callback_token("exec-1", "review", 3)
    named = read_callback_token(token)
    assert named is not None
    assert (named.execution_id, named.step, named.run) == ("exec-1", "review", 3)
    other = digest[:-1] + ("1" if digest.endswith("0") else "0")
    assert named.matches(digest) and not named.matches(other)
    assert read_callback_token(token.replace(".", "!")) is None


def test_a_token_naming_what_no_execution_or_step_can_be_is_not_a_token() -> None:
    """Its parts are checked before any store reads them: on Firestore these were path
    errors or refusals (500)."""
    for execution_id in ("a/b", "/", "", ".", "..", "__x__", "../../etc/passwd", "abc\n"):
        token, _ = new_callback_token(execution_id, "review", 1)
        assert read_callback_token(token) is None, execution_id
    for step in ("a.b", "`x`", "", "a/b"):
        token, _ = new_callback_token("e1", step, 1)
        assert read_callback_token(token) is None, step
    for run in (0, -1, 10**30, True):
        token, _ = new_callback_token("e1", "review", run)
        assert read_callback_token(token) is None, run


class UnreachableStore(MemoryStore):
    async def answer(self, token: CallbackToken, body: Any) -> tuple[Answer, Execution | None]:
        raise StoreUnavailable("execution store: no answer in 10 s")


def test_a_callback_token_never_reaches_the_logs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A token is a credential: the 503 of a store outage is logged without it."""
    token, _ = new_callback_token("exec-1", "review", 1)
    with running(monkeypatch, tmp_path, {}, store=UnreachableStore()) as stack:
        response = httpx.post(f"{stack.url}/callbacks/{token}", json={"approved": True})
        assert response.status_code == 503 and response.headers["retry-after"]
    logged = "".join(capfd.readouterr())
    assert '"/callbacks/(token)"' in logged and "answered 503" in logged
    assert token.rsplit(".", 1)[1] not in logged


def test_the_resumed_run_continues_the_producer_s_trace(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The calls before and after a suspended wait carry the producer's trace id."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with running(monkeypatch, tmp_path, {"nap": _with(NAP, NAP="500ms")}) as stack:
        body = {"flow": "nap", "user_id": "u1", "webhook_url": stack.webhook_url}
        headers = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
        started = stack.client.post("/orchestrate", json=body, headers=headers)
        execution_id = started.json()["execution_id"]
        stack.reaches(execution_id, "waiting")
        stack.reaches(execution_id, "succeeded")
    calls = stack.functions.called("/publish-predictions")
    assert [call.body["at"] for call in calls] == ["first", "second"]
    assert all(call.traceparent and call.traceparent.split("-")[1] == trace_id for call in calls)
