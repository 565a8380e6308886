#!/usr/bin/env bash
# Writes requirements.lock: every runtime dependency of pyproject.toml, pinned, with the
# sha256 of each of its files, for any platform (uv's universal resolution). The image
# installs exactly this (pip --require-hashes), and so does .venv, so the tests run the
# versions that ship. CI fails when pyproject.toml asks for what the lock lacks.
#
# Usage:
#   scripts/lock.sh              after changing dependencies: keeps every pin it can
#   scripts/lock.sh --upgrade    move every pin to the newest release allowed
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib/venv.sh
. "$(dirname "$0")/lib/venv.sh"
enter_project "$0" "${1:-}"
.venv/bin/uv pip compile pyproject.toml --universal --generate-hashes --python-version 3.11 \
    --quiet --output-file requirements.lock "$@"
echo "requirements.lock written; run scripts/test.sh, then commit it with pyproject.toml" >&2
