#!/usr/bin/env bash
# Usage: scripts/backup-config.sh PROJECT REGION [SERVICE] [FILE] [--dry-run]
#
# Saves the service's configuration (image, settings, scaling) as YAML, to FILE
# (default backup-SERVICE-DATE.yaml). Restore it with scripts/restore-config.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=SCRIPTDIR/lib/common.sh
. "$here/lib/common.sh"

parse_arguments "$0" "$@"
project_region_service
file="${positional[3]:-backup-${service}-$(date +%Y%m%d-%H%M%S).yaml}"

if [ "$DRY_RUN" = true ]; then
    run gcloud --project "$project" run services describe "$service" --region "$region" \
        --format export
    echo "# > $file"
    exit 0
fi
gcloud --project "$project" run services describe "$service" --region "$region" \
    --format export > "$file"
echo "Saved $service's configuration to $file" >&2
