#!/usr/bin/env bash
# Runs the orchestrator on this machine with demo ML functions and a webhook receiver:
# on the Pub/Sub emulator when it is installed, else on the in-process transport.
# Prints a curl to paste. Ports: PORT (8080), DEMO_PORT (8081), EMULATOR_PORT (8085).
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/venv.sh
. "$(dirname "$0")/lib/venv.sh"
enter_project "$0" "${1:-}"
exec .venv/bin/python -m service.dev
