"""The stand-ins' answers (service/dev/standins.py) served by aiohttp.web with a fixed
latency and almost no CPU, so that what a benchmark measures is the orchestrator, not
the stand-in (the FastAPI stand-ins record every call, for the tests).

    python bench/functions.py            (PORT, DELAY_MS, VACANCIES from the environment)
"""

from __future__ import annotations

import asyncio
import json
import os

from aiohttp import web

from service.dev.standins import answer

DELAY_S = float(os.environ.get("DELAY_MS", "50")) / 1000
COUNT = int(os.environ.get("VACANCIES", "3"))
# The one answer that does not depend on the call's body, made once.
MATCHED = json.dumps(answer("/match-candidato", {}, COUNT)).encode()


async def function(request: web.Request) -> web.Response:
    body = await request.json()
    await asyncio.sleep(DELAY_S)
    path = request.path
    data = MATCHED if path == "/match-candidato" else json.dumps(answer(path, body)).encode()
    return web.Response(body=data, content_type="application/json")


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


app = web.Application()
app.router.add_get("/health", health)
app.router.add_post("/{name}", function)

if __name__ == "__main__":
    web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), access_log=None, print=None)
