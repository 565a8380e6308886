"""Demo ML functions that answer like the real ones, and a webhook receiver that prints results.

For a newcomer's machine and the benchmark: every function waits DEMO_DELAY_MS
(default 100) and answers a plausible body; `match-candidato` returns
DEMO_VACANCIES vacancies (default 3). The receiver verifies Standard Webhooks
signatures when given the secret.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

FUNCTIONS = {
    "DEFAULT_CREATE_USER_EMBEDDINGS_URL": "/create-user-embeddings",
    "DEFAULT_PROFESSION_ORCHESTRATOR_URL": "/profession-orchestrator",
    "DEFAULT_MATCH_CANDIDATO_URL": "/match-candidato",
    "DEFAULT_MATCH_ANALYSIS_USER_VACANCY_URL": "/match-analysis-user-vacancy",
}


def create_demo_app(
    delay_ms: float = 100, vacancies: int = 3, webhook_secret: str | None = None
) -> FastAPI:
    """The four demo functions and POST /webhook."""
    app = FastAPI(title="Demo ML functions")
    verifier = Webhook(webhook_secret) if webhook_secret else None

    async def caller(request: Request) -> dict[str, Any]:
        body = await request.json()
        if not isinstance(body, dict) or not body.get("user_id") or not body.get("session_id"):
            raise HTTPException(400, "user_id and session_id are required")
        await asyncio.sleep(delay_ms / 1000)
        return body

    @app.post("/create-user-embeddings")
    async def embeddings(request: Request) -> dict[str, Any]:
        body = await caller(request)
        return {"user_id": body["user_id"], "status": "created", "dimensions": 384}

    @app.post("/profession-orchestrator")
    async def professions(request: Request) -> dict[str, Any]:
        body = await caller(request)
        return {"user_id": body["user_id"], "professions": ["data analyst", "ml engineer"]}

    @app.post("/match-candidato")
    async def match(request: Request) -> dict[str, Any]:
        await caller(request)
        return {
            "vacancies": [
                {"vacancy_id": f"vac-{n}", "score": round(0.95 - n * 0.05, 2)}
                for n in range(1, vacancies + 1)
            ]
        }

    @app.post("/match-analysis-user-vacancy")
    async def analysis(request: Request) -> dict[str, Any]:
        body = await caller(request)
        if not body.get("vacancy_id"):
            raise HTTPException(400, "vacancy_id is required")
        return {"vacancy_id": body["vacancy_id"], "fit": "high", "gaps": ["SQL"]}

    @app.post("/webhook", status_code=204)
    async def webhook(request: Request) -> None:
        raw = (await request.body()).decode()
        verified = "unsigned"
        if verifier is not None:
            try:
                verifier.verify(raw, dict(request.headers))
            except WebhookVerificationError as exc:
                raise HTTPException(401, f"bad signature: {exc}") from None
            verified = "signature verified"
        document = json.loads(raw)
        # A flow with `result:` delivers it instead of the steps (those are at status_url).
        if "steps" in document:
            shown = ", ".join(
                f"{name}={step['status']}" for name, step in document["steps"].items()
            )
        else:
            shown = "result: " + ", ".join(document.get("result") or {})
        print(
            f"\n>>> webhook ({verified}): execution {document['execution_id']} "
            f"{document['status']} in {document['duration_ms']} ms [{shown}]\n"
            f"{json.dumps(document, indent=2)}\n",
            file=sys.stderr,
            flush=True,
        )

    return app


def main() -> None:
    """`python -m service.dev.demo`: serve the demo functions alone (benchmarks, trials)."""
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(description="Demo ML functions and webhook receiver")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--delay-ms", type=float, default=100)
    parser.add_argument("--vacancies", type=int, default=3)
    args = parser.parse_args()
    app = create_demo_app(args.delay_ms, args.vacancies)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
