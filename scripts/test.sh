#!/usr/bin/env bash
# Runs every check CI runs: ruff (lint and format), mypy, and the whole test suite,
# which starts the Pub/Sub emulator itself. Extra arguments go to pytest.
set -euo pipefail
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
    sed -n '2,3p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/venv.sh
. scripts/lib/venv.sh
ensure_venv
.venv/bin/ruff check service tests
.venv/bin/ruff format --check service tests
.venv/bin/mypy
exec .venv/bin/pytest "$@"
