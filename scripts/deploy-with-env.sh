#!/usr/bin/env bash
# Usage: scripts/deploy-with-env.sh PROJECT REGION [SERVICE] [deploy.sh options]
#
# Deploys with the settings of .env (ENV_FILE overrides): converts it with
# scripts/env-to-cloudrun.sh, then runs scripts/deploy.sh with the result.
# All options of scripts/deploy.sh apply, --dry-run included.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=SCRIPTDIR/lib/common.sh
. "$here/lib/common.sh"

case "${1:-}" in -h | --help) print_help "$0"; exit 0 ;; esac
env_file="${ENV_FILE:-.env}"
[ -f "$env_file" ] || die "$env_file not found: cp .env.example .env and fill it in"
converted="$(mktemp)"
trap 'rm -f "$converted"' EXIT
"$here/env-to-cloudrun.sh" "$env_file" "$converted" 2>/dev/null
"$here/deploy.sh" "$@" --env-file "$converted"
