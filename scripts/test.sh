#!/usr/bin/env bash
# Runs every check CI runs: ruff (lint and format), mypy, and the whole test suite,
# which starts the Pub/Sub and Firestore emulators itself and runs shellcheck and
# Mermaid's parser on the scripts and flows. Extra arguments go to pytest.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/venv.sh
. "$(dirname "$0")/lib/venv.sh"
enter_project "$0" "${1:-}"
# Mermaid's own parser checks `python -m service graph` (tests/test_cli.py).
if [ ! -d tests/support/mermaid/node_modules ]; then
    if command -v npm >/dev/null 2>&1; then
        echo "Installing Mermaid's parser (npm) ..." >&2
        npm ci --prefix tests/support/mermaid --silent --no-audit --no-fund
    else
        echo "!!! npm not found: the Mermaid check in tests/test_cli.py will fail; install Node.js !!!" >&2
    fi
fi
.venv/bin/ruff check service tests bench
.venv/bin/ruff format --check service tests bench
.venv/bin/mypy
exec .venv/bin/pytest "$@"
