#!/usr/bin/env bash
# Runs the benchmark: starts the Pub/Sub emulator, stand-in functions and the service
# itself, prints a table of figures against ceilings measured in the same run, and
# writes docs/performance/ (table.md, results.json, performance.png). About 8 minutes.
# Arguments go to `python -m bench` (--tiny, --delay-ms MS, --out DIR).
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/venv.sh
. "$(dirname "$0")/lib/venv.sh"
enter_project "$0" "${1:-}"
exec .venv/bin/python -m bench "$@"
