"""Stand-in ML functions and a webhook receiver: real HTTP apps that record what they get."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.dev.demo import FUNCTIONS
from tests.support.identity import Identity


@dataclass
class Call:
    path: str
    body: Any
    audience: str | None
    traceparent: str | None = None


@dataclass
class StandIns:
    """ML functions that wait `delay_s`, answer like the real ones and record each call.

    `script[path]` holds statuses to answer next (then 200). With an `identity`,
    a call must carry an ID token whose audience is the called URL, else 401.
    `padding[path]` adds that many bytes to each answer of `path`, `extra[path]` fields.
    A call to a path in `gates` answers once its event is set.
    """

    delay_s: float = 0.0
    vacancies: int = 3
    padding: dict[str, int] = field(default_factory=dict)
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    identity: Identity | None = None
    script: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    gates: dict[str, threading.Event] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def env(self, base_url: str) -> dict[str, str]:
        return {name: base_url + path for name, path in FUNCTIONS.items()}

    def called(self, path: str) -> list[Call]:
        with self._lock:
            return [call for call in self.calls if call.path == path]

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/{name}")
        async def function(name: str, request: Request) -> Response:
            path = f"/{name}"
            body = await request.json()
            audience = None
            if self.identity is not None:
                token = request.headers.get("authorization", "").removeprefix("Bearer ")
                url = str(request.url).split("?")[0]
                try:
                    audience = self.identity.verify(token, audience=url)["aud"]
                except ValueError as exc:
                    return Response(f"bad token: {exc}", status_code=401)
            with self._lock:
                self.calls.append(Call(path, body, audience, request.headers.get("traceparent")))
                status = self.script[path].pop(0) if self.script[path] else 200
            await asyncio.sleep(self.delay_s)
            if path in self.gates:
                await asyncio.to_thread(self.gates[path].wait, 30)
            if status != 200:
                return Response(f"scripted {status}", status_code=status)
            return Response(json.dumps(self.answer(path, body)), media_type="application/json")

        return app

    def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any]
        if path == "/match-candidato":
            vacancies = range(1, self.vacancies + 1)
            # Ranked, as the real one: v1 scores 0.9, v2 0.8, ...
            answer = {
                "vacancies": [
                    {"vacancy_id": f"v{n}", "score": round(1 - n / 10, 2)} for n in vacancies
                ]
            }
        elif path == "/match-analysis-user-vacancy":
            answer = {"vacancy_id": body["vacancy_id"], "fit": 0.8}
        else:
            answer = {"user_id": body["user_id"], "ok": True}
        if path in self.padding:
            answer["padding"] = "p" * self.padding[path]
        return answer | self.extra.get(path, {})


@dataclass
class Delivery:
    headers: dict[str, str]
    body: str
    verified: bool


@dataclass
class WebhookReceiver:
    """Records webhook deliveries, verifying each with the standardwebhooks library."""

    secret: str
    script: list[int] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()
        verifier = Webhook(self.secret)

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            body = (await request.body()).decode()
            headers = dict(request.headers)
            try:
                verifier.verify(body, headers)
                verified = True
            except WebhookVerificationError:
                verified = False
            self.deliveries.append(Delivery(headers, body, verified))
            status = self.script.pop(0) if self.script else 204
            return Response(status_code=status)

        return app

    def documents(self) -> list[dict[str, Any]]:
        return [json.loads(delivery.body) for delivery in self.deliveries]
