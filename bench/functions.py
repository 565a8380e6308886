"""The stand-ins' answers (service/dev/standins.py) served by aiohttp.web with a fixed
latency and almost no CPU, so that what a benchmark measures is the orchestrator, not
the stand-in (the FastAPI stand-ins record every call, for the tests). It is also a
GCE metadata server handing out ID tokens after TOKEN_DELAY_MS (GCE_METADATA_HOST),
unsigned: the service only reads their expiry.

    python bench/functions.py    (PORT, DELAY_MS, TOKEN_DELAY_MS, VACANCIES from the environment)
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time

from aiohttp import web

from service.dev.standins import answer

DELAY_S = float(os.environ.get("DELAY_MS", "50")) / 1000
TOKEN_DELAY_S = float(os.environ.get("TOKEN_DELAY_MS", "30")) / 1000
COUNT = int(os.environ.get("VACANCIES", "3"))
GOOGLE = {"Metadata-Flavor": "Google"}
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


async def metadata(request: web.Request) -> web.Response:
    """The metadata server's root and account: what google-auth asks before a token."""
    info = {"email": "bench@example.iam.gserviceaccount.com", "aliases": ["default"]}
    return web.json_response(info, headers=GOOGLE)


async def identity(request: web.Request) -> web.Response:
    await asyncio.sleep(TOKEN_DELAY_S)
    claims = {"aud": request.query["audience"], "exp": int(time.time()) + 3600}
    parts = [{"alg": "RS256", "typ": "JWT"}, claims]
    token = ".".join(base64.urlsafe_b64encode(json.dumps(p).encode()).decode() for p in parts)
    return web.Response(text=token + ".c2ln", headers=GOOGLE)


app = web.Application()
app.router.add_get("/health", health)
app.router.add_get("/", metadata)
app.router.add_get("/computeMetadata/v1/instance/service-accounts/{account}/", metadata)
app.router.add_get("/computeMetadata/v1/instance/service-accounts/default/identity", identity)
app.router.add_post("/{name}", function)

if __name__ == "__main__":
    web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), access_log=None, print=None)
