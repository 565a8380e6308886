#!/usr/bin/env bash
# Usage: scripts/env-to-cloudrun.sh [ENV_FILE] [OUTPUT]
#
# Converts a .env file (NAME=value lines) into the YAML that
# `gcloud run deploy --env-vars-file` takes, on stdout or into OUTPUT.
# Every value is single-quoted, so URLs, '=', '#' and ':' survive; values may be
# quoted in .env ("..." or '...'); an unquoted value ends at ' #' (a comment).
# Blank lines and comment lines are skipped.
#
# Defaults: ENV_FILE=.env. Example:
#   scripts/env-to-cloudrun.sh .env env-vars.yaml
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=SCRIPTDIR/lib/common.sh
. "$here/lib/common.sh"

case "${1:-}" in -h | --help) print_help "$0"; exit 0 ;; esac
input="${1:-.env}"
output="${2:-}"
[ -f "$input" ] || die "$input not found (copy .env.example to .env and fill it in)"

convert() {
    local line name value number=0
    while IFS= read -r line || [ -n "$line" ]; do
        number=$((number + 1))
        line="${line%$'\r'}"
        [[ "$line" =~ ^[[:space:]]*(#|$) ]] && continue
        line="${line#export }"
        [[ "$line" == *=* ]] || die "$input line $number: expected NAME=value"
        name="${line%%=*}"
        value="${line#*=}"
        name="${name//[[:space:]]/}"
        [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "$input line $number: bad name '$name'"
        if [[ "$value" =~ ^\"(.*)\"[[:space:]]*$ ]] || [[ "$value" =~ ^\'(.*)\'[[:space:]]*$ ]]; then
            value="${BASH_REMATCH[1]}"
        else
            value="${value%%[[:space:]]#*}"
            value="${value%"${value##*[![:space:]]}"}"
        fi
        printf "%s: '%s'\n" "$name" "${value//\'/\'\'}"
    done < "$input"
}

if [ -n "$output" ]; then
    convert > "$output"
    echo "wrote $output" >&2
else
    convert
fi
