"""The engine's ceiling: a hand-written aiohttp push endpoint making the default flow's calls.

What the orchestrator does for one push with none of its machinery: decode the
envelope, call the functions as the default flow does (embeddings, then professions
and matching at once, then one analysis per vacancy at once) with one shared aiohttp
session, answer 204. No validation, store, retries, tokens, logs, traces or metrics.

    python bench/handwritten.py     (PORT and the DEFAULT_*_URL variables from the environment)
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

import aiohttp
from aiohttp import web

URLS = {
    name: os.environ.get(name, "")
    for name in (
        "DEFAULT_CREATE_USER_EMBEDDINGS_URL",
        "DEFAULT_PROFESSION_ORCHESTRATOR_URL",
        "DEFAULT_MATCH_CANDIDATO_URL",
        "DEFAULT_MATCH_ANALYSIS_USER_VACANCY_URL",
    )
}


async def call(session: aiohttp.ClientSession, name: str, body: dict[str, Any]) -> Any:
    async with session.post(URLS[name], json=body) as response:
        response.raise_for_status()
        return await response.json()


async def push(request: web.Request) -> web.Response:
    envelope = await request.json()
    message = json.loads(base64.b64decode(envelope["message"]["data"]))
    flow_input = message["input"]
    base = {"user_id": flow_input["user_id"], "session_id": flow_input["session_id"]}
    session: aiohttp.ClientSession = request.app["session"]
    if flow_input.get("create_user_embedding"):
        await call(session, "DEFAULT_CREATE_USER_EMBEDDINGS_URL", base)

    async def professions() -> None:
        if flow_input.get("process_profession_orchestrator"):
            await call(session, "DEFAULT_PROFESSION_ORCHESTRATOR_URL", base)

    async def vacancies() -> None:
        if flow_input.get("process_vacancy_orchestrator"):
            matched = await call(session, "DEFAULT_MATCH_CANDIDATO_URL", base)
            await asyncio.gather(
                *(
                    call(
                        session,
                        "DEFAULT_MATCH_ANALYSIS_USER_VACANCY_URL",
                        {**base, "vacancy_id": vacancy["vacancy_id"]},
                    )
                    for vacancy in matched["vacancies"]
                )
            )

    await asyncio.gather(professions(), vacancies())
    return web.Response(status=204)


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def session_context(app: web.Application) -> Any:
    app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    yield
    await app["session"].close()


app = web.Application()
app.cleanup_ctx.append(session_context)
app.router.add_get("/health", health)
app.router.add_post("/pubsub/push", push)

if __name__ == "__main__":
    web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), access_log=None, print=None)
