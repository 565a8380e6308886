#!/usr/bin/env bash
# Usage: scripts/deploy.sh PROJECT REGION [SERVICE] [options]
#
# Builds the image with Cloud Build, deploys it to Cloud Run with the settings of
# env-vars.yaml, and lets the push identity invoke it. Run infra/setup.sh first.
#
# Options:
#   --env-file FILE         settings for --env-vars-file (default env-vars.yaml,
#                           else deployments/env-vars.yaml as in the original guide)
#   --image IMAGE           deploy this image instead of building one
#   --secret-webhook NAME   WEBHOOK_SECRET from Secret Manager secret NAME (latest)
#   --allow-unauthenticated let anyone call the service (default: IAM-authenticated;
#                           Pub/Sub pushes with its own OIDC token either way)
#   --dry-run               print the commands instead of running them
#
# Cloud Run settings (environment): MEMORY (2Gi), CPU (2), MIN_INSTANCES (1),
# MAX_INSTANCES (100), CONCURRENCY (80), REPOSITORY (ml-orchestrator). The request
# timeout is 600 s, the push subscription's ack deadline.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=SCRIPTDIR/lib/common.sh
. "$here/lib/common.sh"

env_file=""
image=""
secret=""
access=--no-allow-unauthenticated
positional=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help) print_help "$0"; exit 0 ;;
        --dry-run) DRY_RUN=true ;;
        --allow-unauthenticated) access=--allow-unauthenticated ;;
        --env-file) env_file="${2:?--env-file needs a file}"; shift ;;
        --image) image="${2:?--image needs an image}"; shift ;;
        --secret-webhook) secret="${2:?--secret-webhook needs a secret name}"; shift ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) positional+=("$1") ;;
    esac
    shift
done
project_region_service

if [ -z "$env_file" ]; then
    for candidate in env-vars.yaml deployments/env-vars.yaml; do
        [ -f "$candidate" ] && env_file="$candidate" && break
    done
fi
[ -n "$env_file" ] && [ -f "$env_file" ] \
    || die "no env-vars.yaml: cp env-vars-template.yaml env-vars.yaml and fill it in (or --env-file)"
for name in DEFAULT_CREATE_USER_EMBEDDINGS_URL DEFAULT_PROFESSION_ORCHESTRATOR_URL \
    DEFAULT_MATCH_CANDIDATO_URL DEFAULT_MATCH_ANALYSIS_USER_VACANCY_URL; do
    grep -qE "^${name}:[[:space:]]*['\"]?https?://" "$env_file" \
        || die "$env_file: $name must be set to the function's URL"
done

number="$(gcloud projects describe "$project" --format='value(projectNumber)')" \
    || die "cannot read project $project (gcloud auth login? the right project id?)"
url="https://${service}-${number}.${region}.run.app"
runtime_account="${service}@${project}.iam.gserviceaccount.com"
push_account="${service}-push@${project}.iam.gserviceaccount.com"

# The settings the deployment knows itself, unless the file sets them.
settings="$(mktemp)"
trap 'rm -f "$settings"' EXIT
cp "$env_file" "$settings"
add_setting() {
    grep -qE "^$1:" "$settings" || printf "%s: '%s'\n" "$1" "$2" >> "$settings"
}
add_setting GOOGLE_CLOUD_PROJECT "$project"
add_setting PUSH_AUTH_AUDIENCE "$url"
add_setting PUSH_AUTH_SERVICE_ACCOUNT "$push_account"
if [ "$DRY_RUN" = true ]; then
    echo "# settings deployed (from $env_file):" && sed 's/^/#   /' "$settings"
fi

g=(gcloud --project "$project" --quiet)
if [ -z "$image" ]; then
    tag="$(git rev-parse --short HEAD 2>/dev/null || date +%Y%m%d%H%M%S)"
    image="${region}-docker.pkg.dev/${project}/${REPOSITORY:-ml-orchestrator}/${service}:${tag}"
    run "${g[@]}" builds submit --tag "$image" .
fi

secrets=()
[ -n "$secret" ] && secrets=(--set-secrets "WEBHOOK_SECRET=${secret}:latest")
run "${g[@]}" run deploy "$service" \
    --region "$region" \
    --image "$image" \
    --service-account "$runtime_account" \
    --env-vars-file "$settings" \
    "${secrets[@]}" \
    --memory "${MEMORY:-2Gi}" \
    --cpu "${CPU:-2}" \
    --timeout 600 \
    --concurrency "${CONCURRENCY:-80}" \
    --min-instances "${MIN_INSTANCES:-1}" \
    --max-instances "${MAX_INSTANCES:-100}" \
    --port 8080 \
    "$access"
run "${g[@]}" run services add-iam-policy-binding "$service" --region "$region" \
    --member "serviceAccount:${push_account}" --role roles/run.invoker

echo "Deployed ${service}: ${url}" >&2
echo "Check it: scripts/test-local.sh ${url} --token" >&2
