#!/usr/bin/env bash
# Runs every check CI runs: ruff (lint and format), mypy, and the whole test suite,
# which starts the Pub/Sub and Firestore emulators itself, runs shellcheck and
# Mermaid's parser on the scripts and flows, and drives the dashboard in Debian's
# chromium (installed here with apt when missing). Extra arguments go to pytest.
# The tests run four at a time (each worker starts its own emulators), then those marked
# `timing` (they assert how long something takes) alone, so no neighbour slows them.
#   --fast   ruff and the tests that need no emulator, browser or process: the inner loop
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/venv.sh
. "$(dirname "$0")/lib/venv.sh"
enter_project "$0" "${1:-}"
if [ "${1:-}" = "--fast" ]; then
    shift
    .venv/bin/ruff check service tests bench
    exec .venv/bin/pytest -n 4 -m "not emulator and not browser and not slow" "$@"
fi
# Mermaid's own parser checks `python -m service graph` (tests/test_cli.py).
if [ ! -d tests/support/mermaid/node_modules ]; then
    if command -v npm >/dev/null 2>&1; then
        echo "Installing Mermaid's parser (npm) ..." >&2
        npm ci --prefix tests/support/mermaid --silent --no-audit --no-fund
    else
        echo "!!! npm not found: the Mermaid check in tests/test_cli.py will fail; install Node.js !!!" >&2
    fi
fi
# The dashboard's browser tests (tests/api/test_ui.py) drive Debian's chromium with Playwright.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "Installing Debian's chromium (apt) for the dashboard's browser tests ..." >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "!!! chromium not found: tests/api/test_ui.py will fail; apt-get install chromium !!!" >&2
    fi
fi
.venv/bin/ruff check service tests bench
.venv/bin/ruff format --check service tests bench
.venv/bin/mypy
if [ "$#" -gt 0 ]; then
    exec .venv/bin/pytest "$@"  # what was asked for, one at a time
fi
failed=0
.venv/bin/pytest -n 4 -m "not timing" || failed=1
.venv/bin/pytest -m timing || failed=1
exit "$failed"
