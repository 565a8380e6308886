"""`python -m service`: check the settings and flows, then serve on $PORT (default 8080)."""

from __future__ import annotations

import os
import sys

import uvicorn

from service.app import create_app, load_checked_flows
from service.errors import ConfigError
from service.settings import Settings


def main() -> int:
    try:
        settings = Settings.load()
        flows = load_checked_flows(settings)
    except ConfigError as exc:
        print(f"ml-orchestrator: cannot start: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(settings, flows),
        host=os.environ.get("HOST", "0.0.0.0"),
        port=int(os.environ.get("PORT", "8080")),
        access_log=False,
        log_config=None,
        proxy_headers=True,
        forwarded_allow_ips="*",
        timeout_graceful_shutdown=9,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
