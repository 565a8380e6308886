"""`python -m service`: check the settings and flows, then serve on $PORT (default 8080).

On SIGTERM (Cloud Run gives 10 s before SIGKILL) the push handler drains: new
pushes are answered 503, running executions get a few seconds to finish and are
otherwise answered 503, so Pub/Sub redelivers them; never a 2xx for unfinished work.
"""

from __future__ import annotations

import os
import sys
from types import FrameType

import uvicorn
from fastapi import FastAPI

from service.app import create_app, load_checked_flows
from service.deps import Components
from service.errors import ConfigError
from service.push import DRAIN_GRACE_S
from service.settings import Settings


class DrainingServer(uvicorn.Server):
    """uvicorn, telling the push handler to drain as soon as the signal arrives."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        components: Components | None = getattr(self._app.state, "components", None)
        if components is not None:
            components.push.drain()
        super().handle_exit(sig, frame)


def main() -> int:
    try:
        settings = Settings.load()
        flows = load_checked_flows(settings)
    except ConfigError as exc:
        print(f"ml-orchestrator: cannot start: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings, flows)
    config = uvicorn.Config(
        app,
        host=os.environ.get("HOST", "0.0.0.0"),
        port=int(os.environ.get("PORT", "8080")),
        access_log=False,
        log_config=None,
        proxy_headers=True,
        forwarded_allow_ips="*",
        timeout_graceful_shutdown=int(DRAIN_GRACE_S) + 1,
    )
    DrainingServer(config, app).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
