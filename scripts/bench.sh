#!/usr/bin/env bash
# Runs the benchmark: starts the Pub/Sub emulator, stand-in functions and the service
# itself, prints a table of figures against ceilings measured in the same run, and
# writes docs/performance/ (table.md, results.json, performance.png). About 3 minutes.
# Arguments go to `python -m bench` (--tiny, --delay-ms MS, --out DIR).
set -euo pipefail
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
    sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
cd "$(dirname "$0")/.."
# shellcheck source=SCRIPTDIR/lib/venv.sh
. scripts/lib/venv.sh
ensure_venv
exec .venv/bin/python -m bench "$@"
