#!/usr/bin/env bash
# Usage: scripts/build-local.sh [--dry-run]
#
# Builds the image with Docker and runs it on http://localhost:8080 with the
# settings of .env (ENV_FILE overrides; IMAGE names the image, default
# ml-orchestrator:local). Without Docker, ./scripts/dev.sh runs the same service.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=SCRIPTDIR/lib/common.sh
. "$here/lib/common.sh"

for argument in "$@"; do
    case "$argument" in
        -h | --help) print_help "$0"; exit 0 ;;
        --dry-run) DRY_RUN=true ;;
        *) die "unknown argument $argument (see --help)" ;;
    esac
done
require_tool docker "install Docker, or run ./scripts/dev.sh instead"
env_file="${ENV_FILE:-.env}"
[ -f "$env_file" ] || die "$env_file not found: cp .env.example .env and fill it in"
image="${IMAGE:-ml-orchestrator:local}"
cd "$here/.."
run docker build --tag "$image" .
run docker run --rm --publish 8080:8080 --env-file "$env_file" --env PORT=8080 "$image"
