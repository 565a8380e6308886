#!/usr/bin/env bash
# Usage: scripts/rollback.sh PROJECT REGION [SERVICE] [REVISION] [--dry-run]
#
# Sends all traffic to REVISION, or, without it, to the revision before the
# newest one. List the revisions with:
#   gcloud run revisions list --service SERVICE --region REGION --project PROJECT
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=SCRIPTDIR/lib/common.sh
. "$here/lib/common.sh"

parse_arguments "$0" "$@"
project_region_service
revision="${positional[3]:-}"
g=(gcloud --project "$project" --quiet)

if [ -z "$revision" ]; then
    revisions="$("${g[@]}" run revisions list --service "$service" --region "$region" \
        --sort-by '~metadata.creationTimestamp' --limit 2 --format 'value(metadata.name)')"
    revision="$(printf '%s\n' "$revisions" | sed -n 2p)"
    [ -n "$revision" ] || die "$service has no earlier revision to roll back to"
fi
run "${g[@]}" run services update-traffic "$service" --region "$region" \
    --to-revisions "${revision}=100"
echo "All traffic of $service goes to $revision." >&2
