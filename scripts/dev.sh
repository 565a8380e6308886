#!/usr/bin/env bash
# Runs the orchestrator on this machine with demo ML functions and a webhook receiver:
# on the Pub/Sub emulator when it is installed, else on the in-process transport.
# Prints a curl to paste. Ports: PORT (8080), DEMO_PORT (8081), EMULATOR_PORT (8085).
set -euo pipefail
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
    sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
cd "$(dirname "$0")/.."
# shellcheck source=SCRIPTDIR/lib/venv.sh
. scripts/lib/venv.sh
ensure_venv
exec .venv/bin/python -m service.dev
