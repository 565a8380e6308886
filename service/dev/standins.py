"""The stand-ins: ML functions that answer like the real ones, and a webhook receiver.

One set for the local stack (`python -m service.dev`), the tests and the benchmarks:
real HTTP apps that record what they get. The functions wait `delay_s`, answer a
plausible body (`answer`), may be scripted to fail (`script`), held (`gates`) or made
to check ID tokens (`verify`). The receiver verifies Standard Webhooks signatures and,
for a person watching the local stack, prints each result (`echo`).

For the example flow of waits (flows/examples/batch-review.yaml) they also play a
Vertex-AI-like batch API (`/v1/batchPredictionJobs` answers a long-running operation,
done after `job_s`; with `access_token` set, a call must carry it) and a reviewer
(`/review`, which posts its verdict to the callback URL it was sent after `review_s`,
unless that is None; with `review_first`, before it answers the call itself, as a fast
reviewer or an outside system that answers at once would; `reviewed` keeps the status
each verdict was answered with).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

# The default flow's settings and the paths the stand-ins answer on.
FUNCTIONS = {
    "DEFAULT_CREATE_USER_EMBEDDINGS_URL": "/create-user-embeddings",
    "DEFAULT_PROFESSION_ORCHESTRATOR_URL": "/profession-orchestrator",
    "DEFAULT_MATCH_CANDIDATO_URL": "/match-candidato",
    "DEFAULT_MATCH_ANALYSIS_USER_VACANCY_URL": "/match-analysis-user-vacancy",
}
# The example flow of waits: its settings and paths.
EXAMPLE_FUNCTIONS = {
    "BATCH_API_URL": "/v1",
    "REVIEW_URL": "/review",
    "PUBLISH_URL": "/publish-predictions",
}
OPERATIONS = "projects/demo/locations/us-central1/operations"


def answer(path: str, body: Any, vacancies: int = 3) -> dict[str, Any]:
    """What the function at `path` answers to `body`."""
    if path == "/match-candidato":
        # Ranked, as the real one: v1 scores 0.9, v2 0.8, ... (0 from v10 on).
        ranked = [
            {"vacancy_id": f"v{n}", "score": round(max(0.0, 1 - n / 10), 2)}
            for n in range(1, vacancies + 1)
        ]
        return {"vacancies": ranked}
    if path == "/match-analysis-user-vacancy":
        return {"vacancy_id": body["vacancy_id"], "fit": 0.8}
    return {"user_id": body["user_id"], "ok": True}


@dataclass
class Call:
    path: str
    body: Any
    audience: str | None
    traceparent: str | None = None


# Checks an ID token for an audience: its claims, or ValueError (google-auth's way).
Verify = Callable[[str, str], dict[str, Any]]


@dataclass
class StandIns:
    """ML functions that wait `delay_s`, answer like the real ones and record each call.

    `script[path]` holds statuses to answer next (then 200). With `verify`, a call must
    carry an ID token whose audience is the called URL, else 401. `padding[path]` adds
    that many bytes to each answer of `path`, `extra[path]` fields. A call to a path in
    `gates` answers once its event is set. `capacity[path]`: calls beyond that many in
    flight are answered 429 (with `retry_after`, if set, as scripted 429s and 503s are) and
    counted in `refused`; `peak` is the most calls in flight seen per path.
    """

    delay_s: float = 0.0
    vacancies: int = 3
    padding: dict[str, int] = field(default_factory=dict)
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    verify: Verify | None = None
    script: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    gates: dict[str, threading.Event] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    job_s: float = 20.0
    failing_jobs: bool = False
    access_token: str | None = None
    review_s: float | None = 5.0
    review: dict[str, Any] = field(default_factory=lambda: {"approved": True, "reviewer": "demo"})
    review_first: bool = False
    reviewed: list[int] = field(default_factory=list)
    jobs: dict[str, float] = field(default_factory=dict)  # operation name -> its start
    capacity: dict[str, int] = field(default_factory=dict)
    retry_after: str | None = None
    refused: Counter[str] = field(default_factory=Counter)
    peak: Counter[str] = field(default_factory=Counter)
    _in_flight: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _reviews: set[asyncio.Task[None]] = field(default_factory=set)

    def env(self, base_url: str) -> dict[str, str]:
        paths = FUNCTIONS | EXAMPLE_FUNCTIONS
        return {name: base_url + path for name, path in paths.items()}

    def called(self, path: str) -> list[Call]:
        with self._lock:
            return [call for call in self.calls if call.path == path]

    def app(self, webhook: WebhookReceiver | None = None) -> FastAPI:
        """The functions at `/{name}`; with `webhook`, its receiver at `/hook` too."""
        app = FastAPI(title="Stand-in ML functions")
        if webhook is not None:
            app.add_api_route("/hook", webhook.receive, methods=["POST"])
        app.add_api_route("/v1/batchPredictionJobs", self._start_job, methods=["POST"])
        app.add_api_route("/v1/{name:path}", self._operation, methods=["GET"])
        app.add_api_route("/review", self._review, methods=["POST"])

        @app.post("/{name}")
        async def function(name: str, request: Request) -> Response:
            path = f"/{name}"
            body = await request.json()
            audience = None
            if self.verify is not None:
                token = request.headers.get("authorization", "").removeprefix("Bearer ")
                url = str(request.url).split("?")[0]
                try:
                    audience = self.verify(token, url)["aud"]
                except ValueError as exc:
                    return Response(f"bad token: {exc}", status_code=401)
            with self._lock:
                self.calls.append(Call(path, body, audience, request.headers.get("traceparent")))
                status = self.script[path].pop(0) if self.script[path] else 200
                if self._in_flight[path] >= self.capacity.get(path, sys.maxsize):
                    self.refused[path] += 1
                    headers = {"Retry-After": self.retry_after} if self.retry_after else {}
                    return Response("over capacity", status_code=429, headers=headers)
                self._in_flight[path] += 1
                self.peak[path] = max(self.peak[path], self._in_flight[path])
            try:
                await asyncio.sleep(self.delay_s)
                if path in self.gates:
                    await asyncio.to_thread(self.gates[path].wait, 30)
            finally:
                with self._lock:
                    self._in_flight[path] -= 1
            if status != 200:
                overloaded = status in (429, 503) and self.retry_after is not None
                headers = {"Retry-After": self.retry_after or ""} if overloaded else {}
                return Response(f"scripted {status}", status_code=status, headers=headers)
            return Response(json.dumps(self.answer(path, body)), media_type="application/json")

        return app

    async def _start_job(self, request: Request) -> Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        body = await request.json()
        with self._lock:
            name = f"{OPERATIONS}/{len(self.jobs) + 1}"
            self.jobs[name] = time.monotonic()
            self.calls.append(Call("/v1/batchPredictionJobs", body, None))
        return _json({"name": name, "done": False, "metadata": {"state": "JOB_STATE_RUNNING"}})

    async def _operation(self, name: str, request: Request) -> Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        with self._lock:
            started = self.jobs.get(name)
            self.calls.append(Call(f"/v1/{name}", None, None))
        if started is None:
            return Response(f"no operation {name}", status_code=404)
        if time.monotonic() - started < self.job_s:
            return _json({"name": name, "done": False})
        if self.failing_jobs:
            error = {"code": 13, "message": "the batch job ran out of quota"}
            return _json({"name": name, "done": True, "error": error})
        response = {"outputUri": f"gs://demo/predictions/{name.rsplit('/', 1)[-1]}", "count": 3}
        return _json({"name": name, "done": True, "response": response})

    async def _review(self, request: Request) -> Response:
        body = await request.json()
        with self._lock:
            self.calls.append(Call("/review", body, None))
        if self.review_first:
            await self._post_review(body["approve_url"], 0.0)
        elif self.review_s is not None:
            task = asyncio.create_task(self._post_review(body["approve_url"], self.review_s))
            self._reviews.add(task)
            task.add_done_callback(self._reviews.discard)
        return _json({"queued": True})

    async def _post_review(self, url: str, after_s: float) -> None:
        await asyncio.sleep(after_s)
        async with httpx.AsyncClient(timeout=10) as client:
            answered = await client.post(url, json=self.review)
        with self._lock:
            self.reviewed.append(answered.status_code)

    def _refused(self, request: Request) -> Response | None:
        """401 unless the call carries the expected access token (when one is set)."""
        if self.access_token is None:
            return None
        if request.headers.get("authorization") != f"Bearer {self.access_token}":
            return Response("missing or wrong access token", status_code=401)
        return None

    def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        answered = answer(path, body, self.vacancies)
        if path in self.padding:
            answered["padding"] = "p" * self.padding[path]
        return answered | self.extra.get(path, {})


def _json(value: Any) -> Response:
    return Response(json.dumps(value), media_type="application/json")


@dataclass
class Delivery:
    headers: dict[str, str]
    body: str
    verified: bool


@dataclass
class WebhookReceiver:
    """Records webhook deliveries at `/hook`, verifying each with the standardwebhooks
    library when it has the secret; with `echo`, prints each result for a person."""

    secret: str | None
    script: list[int] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    echo: bool = False

    def app(self) -> FastAPI:
        app = FastAPI(title="Webhook receiver")
        app.add_api_route("/hook", self.receive, methods=["POST"])
        return app

    async def receive(self, request: Request) -> Response:
        body = (await request.body()).decode()
        headers = dict(request.headers)
        verified = False
        if self.secret is not None:
            try:
                Webhook(self.secret).verify(body, headers)
                verified = True
            except WebhookVerificationError:
                pass
        self.deliveries.append(Delivery(headers, body, verified))
        if self.echo:
            _show(json.loads(body), "signature verified" if verified else "NOT verified")
        status = self.script.pop(0) if self.script else 204
        return Response(status_code=status)

    def documents(self) -> list[dict[str, Any]]:
        return [json.loads(delivery.body) for delivery in self.deliveries]


def _show(document: dict[str, Any], verified: str) -> None:
    # A flow with `result:` delivers it instead of the steps (those are at status_url).
    if "steps" in document:
        shown = ", ".join(f"{name}={step['status']}" for name, step in document["steps"].items())
    else:
        shown = "result: " + ", ".join(document.get("result") or {})
    print(
        f"\n>>> webhook ({verified}): execution {document['execution_id']} "
        f"{document['status']} in {document['duration_ms']} ms [{shown}]\n"
        f"{json.dumps(document, indent=2)}\n",
        file=sys.stderr,
        flush=True,
    )
