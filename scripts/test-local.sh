#!/usr/bin/env bash
# Usage: scripts/test-local.sh [URL] [--token]
#
# Smoke-tests a running orchestrator (default http://localhost:8080): health,
# readiness, one orchestration of the original system's test payload, and its
# status until it ends. Exits non-zero at the first check that fails.
#
#   --token   send `gcloud auth print-identity-token` (for an authenticated Cloud Run)
#   WAIT_S    how long to wait for the execution to end (default 120)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=SCRIPTDIR/lib/common.sh
. "$here/lib/common.sh"

url="http://localhost:8080"
auth=()
for argument in "$@"; do
    case "$argument" in
        -h | --help) print_help "$0"; exit 0 ;;
        --token)
            require_tool gcloud "needed for --token"
            auth=(-H "Authorization: Bearer $(gcloud auth print-identity-token)")
            ;;
        -*) die "unknown option $argument (see --help)" ;;
        *) url="${argument%/}" ;;
    esac
done
require_tool curl "install curl"
require_tool python3 "needed to read JSON answers"

field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
check() {
    local name="$1" expected="$2" status
    shift 2
    status="$(curl -sS -o /tmp/test-local.$$ -w '%{http_code}' "${auth[@]}" "$@")" \
        || die "$name: $url is not reachable"
    [ "$status" = "$expected" ] || die "$name: HTTP $status, expected $expected: $(cat /tmp/test-local.$$)"
    echo "ok: $name (HTTP $status)"
}
trap 'rm -f /tmp/test-local.$$' EXIT

check "GET /health" 200 "$url/health"
check "GET /ready" 200 "$url/ready"
payload='{"user_id": "test_user_123", "session_id": "test_session_456",
  "create_user_embedding": false, "process_profession_orchestrator": true,
  "process_vacancy_orchestrator": true}'
check "POST /orchestrate" 202 -X POST "$url/orchestrate" \
    -H 'Content-Type: application/json' -d "$payload"
execution_id="$(field execution_id < /tmp/test-local.$$)"
echo "   execution $execution_id"

deadline=$((SECONDS + ${WAIT_S:-120}))
while true; do
    status="$(curl -sS "${auth[@]}" "$url/executions/$execution_id" | field status 2>/dev/null || true)"
    case "$status" in
        succeeded) echo "ok: execution succeeded"; exit 0 ;;
        failed | partial | rejected)
            curl -sS "${auth[@]}" "$url/executions/$execution_id" >&2
            die "execution $status" ;;
    esac
    [ "$SECONDS" -lt "$deadline" ] || die "execution still '${status:-unknown}' after ${WAIT_S:-120} s"
    sleep 1
done
