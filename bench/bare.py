"""The ceiling of the front door: a bare FastAPI endpoint that parses the same body, 202."""

from __future__ import annotations

import os

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

app = FastAPI()
pushes = 0


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/orchestrate")
async def orchestrate(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse(
        {"execution_id": "x", "flow": "bare", "status": "accepted", "n": len(body)}, 202
    )


@app.post("/pubsub/push", status_code=204)
async def push(request: Request) -> None:
    global pushes
    await request.body()
    pushes += 1


@app.get("/count")
async def count() -> dict[str, int]:
    return {"pushes": pushes}


if __name__ == "__main__":
    # The same server settings as python -m service.
    uvicorn.run(
        app, host="127.0.0.1", port=int(os.environ["PORT"]), access_log=False, log_level="warning"
    )
