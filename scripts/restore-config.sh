#!/usr/bin/env bash
# Usage: scripts/restore-config.sh PROJECT REGION FILE [--dry-run]
#
# Replaces the service's configuration with FILE, saved by scripts/backup-config.sh.
# This creates a new revision with that configuration.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=SCRIPTDIR/lib/common.sh
. "$here/lib/common.sh"

parse_arguments "$0" "$@"
[ "${#positional[@]}" -ge 3 ] || die "PROJECT, REGION and FILE are required (see --help)"
project="${positional[0]}"
region="${positional[1]}"
file="${positional[2]}"
[ -f "$file" ] || die "$file not found"
require_tool gcloud "install the Google Cloud SDK: https://cloud.google.com/sdk/docs/install"
run gcloud --project "$project" --quiet run services replace "$file" --region "$region"
