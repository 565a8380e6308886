"""Stand-in ML functions for benchmarks: a fixed latency and almost no CPU (aiohttp.web),
so that what is measured is the orchestrator, not the stand-in.

    python bench/functions.py            (PORT, DELAY_MS, VACANCIES from the environment)
"""

from __future__ import annotations

import asyncio
import json
import os

from aiohttp import web

DELAY_S = float(os.environ.get("DELAY_MS", "50")) / 1000
COUNT = int(os.environ.get("VACANCIES", "3"))
# Ranked, as the real matching answers: scores from 1 down.
VACANCIES = [
    {"vacancy_id": f"vac-{n}", "score": round(1 - n / (COUNT + 1), 3)} for n in range(1, COUNT + 1)
]
ANSWERS = {
    "/match-candidato": json.dumps({"vacancies": VACANCIES}).encode(),
}
DEFAULT = b'{"ok": true}'


async def function(request: web.Request) -> web.Response:
    await request.read()
    await asyncio.sleep(DELAY_S)
    return web.Response(body=ANSWERS.get(request.path, DEFAULT), content_type="application/json")


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


app = web.Application()
app.router.add_get("/health", health)
app.router.add_post("/{name}", function)

if __name__ == "__main__":
    web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), access_log=None, print=None)
