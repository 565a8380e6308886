#!/usr/bin/env bash
# Runs every check CI runs: ruff (lint and format), mypy, and the whole test suite,
# which starts the Pub/Sub and Firestore emulators itself and runs shellcheck and
# Mermaid's parser on the scripts and flows. Extra arguments go to pytest.
set -euo pipefail
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
    sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
cd "$(dirname "$0")/.."
# shellcheck source=SCRIPTDIR/lib/venv.sh
. scripts/lib/venv.sh
ensure_venv
# Mermaid's own parser checks `python -m service graph` (tests/test_cli.py).
if [ ! -d tests/support/mermaid/node_modules ]; then
    if command -v npm >/dev/null 2>&1; then
        echo "Installing Mermaid's parser (npm) ..." >&2
        npm ci --prefix tests/support/mermaid --silent --no-audit --no-fund
    else
        echo "!!! npm not found: the Mermaid check in tests/test_cli.py will fail; install Node.js !!!" >&2
    fi
fi
.venv/bin/ruff check service tests
.venv/bin/ruff format --check service tests
.venv/bin/mypy
exec .venv/bin/pytest "$@"
