#!/usr/bin/env bash
# Usage: infra/setup.sh PROJECT REGION [SERVICE] [--firestore] [--monitoring] [--schedules]
#                       [--triggers] [--dry-run]
#
# Creates what the orchestrator needs around its Cloud Run service, and only what
# is missing: running it again changes nothing. Run it before the first deploy.
#
#   APIs         run, pubsub, cloudbuild, artifactregistry, iamcredentials,
#                cloudscheduler (+ firestore)
#   images       Artifact Registry repository REPOSITORY (default ml-orchestrator)
#   identities   SERVICE@ (the service's own), SERVICE-push@ (signs push requests)
#   topics       ORCHESTRATION_TOPIC, RESULT_TOPIC, ORCHESTRATION_TOPIC-dead-letter
#                (+ a pull subscription on it, to inspect and replay)
#   push         subscription SERVICE-push to https://SERVICE-NUMBER.REGION.run.app/pubsub/push:
#                OIDC token of SERVICE-push@ with the service URL as audience, ack
#                deadline 600 s, retry backoff 10 s..600 s, dead-letter topic after
#                PUSH_MAX_DELIVERY_ATTEMPTS (5) deliveries
#   IAM          SERVICE@: publish to Pub/Sub, invoke Cloud Run and Cloud Functions,
#                use Firestore, write traces and metrics (Cloud Trace, Monitoring); the Pub/Sub service agent: mint SERVICE-push@ tokens,
#                publish dead letters, acknowledge the dead-lettered messages
#   timers       Cloud Scheduler job SERVICE-wake: every minute, POST /executions/wake
#                with an OIDC token of SERVICE-push@ (audience: the service URL), which
#                resumes the waiting executions that are due
#   --firestore  the Firestore database (REGION); TTL policies on expire_at for the
#                executions, their execution-parts (large outputs), their children's
#                execution-ends and the step cache
#                (COLLECTION-cache); the composite
#                indexes GET /executions needs (status, flow, requested_at) and the
#                due timers' (status, wake_at); no indexes on the JSON fields input,
#                steps, answers and data
#   --schedules  one Cloud Scheduler job SERVICE-schedule-FLOW-NAME per schedule the flows
#                declare (`python -m service schedules`, with the project's .venv and
#                FLOWS_DIR), created or updated: POST /orchestrate with the schedule's
#                input, OIDC as SERVICE-push@; the SERVICE-schedule-* jobs no flow
#                declares any more are deleted
#   --triggers   one push subscription SERVICE-trigger-FLOW-NAME per event trigger the
#                flows declare (`python -m service triggers`) on the trigger's topic (one
#                of this project is created when missing) to /pubsub/events/FLOW/NAME,
#                with the push subscription's identity, ack deadline, retry policy and
#                dead-letter topic; created, updated (re-created when its topic changed),
#                and the SERVICE-trigger-* subscriptions no flow declares any more deleted
#   --monitoring the Cloud Monitoring dashboard infra/dashboard.json (rates, failures,
#                step latency p50/p99, in flight, webhooks; needs the service to run
#                with OTEL_METRICS_EXPORTER=gcp_monitoring)
#
# The run.invoker grant for SERVICE-push@ on the service is made by scripts/deploy.sh,
# once the service exists. Environment: ORCHESTRATION_TOPIC, RESULT_TOPIC, REPOSITORY,
# FIRESTORE_COLLECTION, PUSH_MAX_DELIVERY_ATTEMPTS override the defaults.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=SCRIPTDIR/../scripts/lib/common.sh
. "$here/../scripts/lib/common.sh"

firestore=false
monitoring=false
schedules=false
triggers=false
positional=()
for argument in "$@"; do
    case "$argument" in
        -h | --help) print_help "$0"; exit 0 ;;
        --dry-run) DRY_RUN=true ;;
        --firestore) firestore=true ;;
        --monitoring) monitoring=true ;;
        --schedules) schedules=true ;;
        --triggers) triggers=true ;;
        -*) die "unknown option $argument (see --help)" ;;
        *) positional+=("$argument") ;;
    esac
done
project_region_service

topic="${ORCHESTRATION_TOPIC:-ml-orchestration-requests}"
results="${RESULT_TOPIC:-ml-orchestration-results}"
dead_letter="${topic}-dead-letter"
repository="${REPOSITORY:-ml-orchestrator}"
collection="${FIRESTORE_COLLECTION:-ml-orchestrator-executions}"
attempts="${PUSH_MAX_DELIVERY_ATTEMPTS:-5}"
runtime_account="${service}@${project}.iam.gserviceaccount.com"
push_account="${service}-push@${project}.iam.gserviceaccount.com"

number="$(gcloud projects describe "$project" --format='value(projectNumber)')" \
    || die "cannot read project $project (gcloud auth login? the right project id?)"
[ -n "$number" ] || die "project $project has no project number"
url="https://${service}-${number}.${region}.run.app"
pubsub_agent="service-${number}@gcp-sa-pubsub.iam.gserviceaccount.com"
g=(gcloud --project "$project" --quiet)

# Every push subscription (the requests' and each trigger's) delivers alike: OIDC tokens of
# SERVICE-push@ for the service URL, 10 s..600 s backoff, dead letters after $attempts.
push_flags=(
    --push-auth-service-account "$push_account"
    --push-auth-token-audience "$url"
    --ack-deadline 600
    --min-retry-delay 10s
    --max-retry-delay 600s
    --dead-letter-topic "$dead_letter"
    --max-delivery-attempts "$attempts"
)

# What the flows declare (KIND: schedules or triggers), one tab-separated line each, read
# with the project's .venv and without the flows' settings.
declared_by_flows() {
    local python_bin="${PYTHON:-$here/../.venv/bin/python}"
    [ -x "$python_bin" ] \
        || die "--$1 reads the flows with the project's .venv: run ./scripts/dev.sh once"
    PYTHONPATH="$here/.." "$python_bin" -m service "$1" --tsv \
        || die "the flows' $1 could not be read (python -m service $1)"
}

# A composite index has no name to describe it by: one that exists answers ALREADY_EXISTS.
create_index() {
    local output
    if [ "$DRY_RUN" = true ]; then
        run "${g[@]}" firestore indexes composite create --async "$@"
        return
    fi
    output=$("${g[@]}" firestore indexes composite create --async "$@" 2>&1) && return
    grep -q ALREADY_EXISTS <<<"$output" || die "creating a Firestore index: $output"
}

echo "== APIs" >&2
apis=(run.googleapis.com pubsub.googleapis.com cloudbuild.googleapis.com
    artifactregistry.googleapis.com iamcredentials.googleapis.com cloudscheduler.googleapis.com)
[ "$firestore" = true ] && apis+=(firestore.googleapis.com)
run "${g[@]}" services enable "${apis[@]}"

echo "== Artifact Registry" >&2
exists "${g[@]}" artifacts repositories describe "$repository" --location "$region" \
    || run "${g[@]}" artifacts repositories create "$repository" \
        --repository-format docker --location "$region"

echo "== Service accounts" >&2
exists "${g[@]}" iam service-accounts describe "$runtime_account" \
    || run "${g[@]}" iam service-accounts create "$service" \
        --display-name "ML Orchestrator (runtime)"
exists "${g[@]}" iam service-accounts describe "$push_account" \
    || run "${g[@]}" iam service-accounts create "${service}-push" \
        --display-name "ML Orchestrator (Pub/Sub push identity)"

echo "== Topics" >&2
for name in "$topic" "$results" "$dead_letter"; do
    exists "${g[@]}" pubsub topics describe "$name" || run "${g[@]}" pubsub topics create "$name"
done
exists "${g[@]}" pubsub subscriptions describe "${dead_letter}-sub" \
    || run "${g[@]}" pubsub subscriptions create "${dead_letter}-sub" \
        --topic "$dead_letter" --message-retention-duration 7d

echo "== Push subscription" >&2
exists "${g[@]}" pubsub subscriptions describe "${service}-push" \
    || run "${g[@]}" pubsub subscriptions create "${service}-push" \
        --topic "$topic" --push-endpoint "${url}/pubsub/push" "${push_flags[@]}"

echo "== Timers" >&2
# Waiting executions are resumed by this job; the service fires none itself on Cloud Run.
exists "${g[@]}" scheduler jobs describe "${service}-wake" --location "$region" \
    || run "${g[@]}" scheduler jobs create http "${service}-wake" \
        --location "$region" \
        --schedule "* * * * *" \
        --uri "${url}/executions/wake" \
        --http-method POST \
        --oidc-service-account-email "$push_account" \
        --oidc-token-audience "$url" \
        --attempt-deadline 60s

echo "== IAM" >&2
for role in roles/pubsub.publisher roles/run.invoker roles/cloudfunctions.invoker roles/datastore.user \
    roles/cloudtrace.agent roles/monitoring.metricWriter; do
    run "${g[@]}" projects add-iam-policy-binding "$project" \
        --member "serviceAccount:${runtime_account}" --role "$role" --condition None
done
run "${g[@]}" iam service-accounts add-iam-policy-binding "$push_account" \
    --member "serviceAccount:${pubsub_agent}" --role roles/iam.serviceAccountTokenCreator
run "${g[@]}" pubsub topics add-iam-policy-binding "$dead_letter" \
    --member "serviceAccount:${pubsub_agent}" --role roles/pubsub.publisher
run "${g[@]}" pubsub subscriptions add-iam-policy-binding "${service}-push" \
    --member "serviceAccount:${pubsub_agent}" --role roles/pubsub.subscriber

if [ "$firestore" = true ]; then
    echo "== Firestore" >&2
    exists "${g[@]}" firestore databases describe --database "(default)" \
        || run "${g[@]}" firestore databases create --location "$region"
    for group in "$collection" execution-parts execution-ends "${collection}-cache"; do
        run "${g[@]}" firestore fields ttls update expire_at \
            --collection-group "$group" --enable-ttl
    done
    # Listing newest first, filtered by status (equality or IN) and/or flow, or a parent's
    # children.
    for fields in status flow status,flow parent.execution_id; do
        configs=()
        for field in ${fields//,/ }; do
            configs+=(--field-config "field-path=${field},order=ascending")
        done
        create_index --collection-group "$collection" --query-scope collection \
            "${configs[@]}" --field-config "field-path=requested_at,order=descending"
    done
    # Due timers: waiting executions by wake_at.
    create_index --collection-group "$collection" --query-scope collection \
        --field-config "field-path=status,order=ascending" \
        --field-config "field-path=wake_at,order=ascending"
    # Only status, flow, requested_at, cancel_requested, wake_at and parent are queried.
    # Indexing the rest only costs writes, and timestamps rewritten on every save (updated_at,
    # lease_until, expire_at) are the monotonically increasing values Firestore
    # advises not to index past ~500 writes/s (PERFORMANCE.md, capacity).
    for field in input steps result answers shadows started_at finished_at duration_ms error run \
        flow_version replay_of trigger webhook_url traceparent owner lease_until delivered updated_at expire_at; do
        run "${g[@]}" firestore indexes fields update "$field" \
            --collection-group "$collection" --disable-indexes
    done
    for field in data expire_at; do
        run "${g[@]}" firestore indexes fields update "$field" \
            --collection-group execution-parts --disable-indexes
    done
    # Children's ends are counted by `wait` only.
    for field in end expire_at; do
        run "${g[@]}" firestore indexes fields update "$field" \
            --collection-group execution-ends --disable-indexes
    done
    # The step cache is read by document id only.
    for field in output made_by expire_at; do
        run "${g[@]}" firestore indexes fields update "$field" \
            --collection-group "${collection}-cache" --disable-indexes
    done
    # So are the limits' shares and the flow versions.
    run "${g[@]}" firestore indexes fields update holders \
        --collection-group "${collection}-limits" --disable-indexes
    run "${g[@]}" firestore indexes fields update source \
        --collection-group "${collection}-flows" --disable-indexes
fi

if [ "$schedules" = true ]; then
    echo "== Schedules" >&2
    listed="$(declared_by_flows schedules)"
    declared=" "
    while IFS=$'\t' read -r id cron zone body; do
        [ -n "$id" ] || continue
        job="${service}-schedule-${id}"
        declared+="$job "
        if exists "${g[@]}" scheduler jobs describe "$job" --location "$region"; then
            verb=update headers=--update-headers
        else
            verb=create headers=--headers
        fi
        run "${g[@]}" scheduler jobs "$verb" http "$job" \
            --location "$region" \
            --schedule "$cron" \
            --time-zone "$zone" \
            --uri "${url}/orchestrate" \
            --http-method POST \
            "$headers" Content-Type=application/json \
            --message-body "$body" \
            --oidc-service-account-email "$push_account" \
            --oidc-token-audience "$url"
    done <<<"$listed"
    for job in $("${g[@]}" scheduler jobs list --location "$region" --format 'value(name.basename())'); do
        case "$job" in
            "${service}-schedule-"*)
                [[ "$declared" == *" $job "* ]] \
                    || run "${g[@]}" scheduler jobs delete "$job" --location "$region"
                ;;
        esac
    done
fi

if [ "$triggers" = true ]; then
    echo "== Triggers" >&2
    listed="$(declared_by_flows triggers)"
    declared=" "
    while IFS=$'\t' read -r id trigger_topic push_path; do
        [ -n "$id" ] || continue
        subscription="${service}-trigger-${id}"
        declared+="$subscription "
        case "$trigger_topic" in
            projects/*) topic_path="$trigger_topic" ;;  # another project's: not ours to make
            *)
                topic_path="projects/${project}/topics/${trigger_topic}"
                exists "${g[@]}" pubsub topics describe "$trigger_topic" \
                    || run "${g[@]}" pubsub topics create "$trigger_topic"
                ;;
        esac
        # A subscription's topic cannot change: one on another topic is made again.
        current="$("${g[@]}" pubsub subscriptions describe "$subscription" \
            --format 'value(topic)' 2>/dev/null || true)"
        if [ -n "$current" ] && [ "$current" != "$topic_path" ]; then
            run "${g[@]}" pubsub subscriptions delete "$subscription"
            current=""
        fi
        if [ -n "$current" ]; then
            run "${g[@]}" pubsub subscriptions update "$subscription" \
                --push-endpoint "${url}${push_path}" "${push_flags[@]}"
        else
            run "${g[@]}" pubsub subscriptions create "$subscription" \
                --topic "$topic_path" --push-endpoint "${url}${push_path}" "${push_flags[@]}"
        fi
        # Dead-lettering acknowledges the message on the subscription as the service agent.
        run "${g[@]}" pubsub subscriptions add-iam-policy-binding "$subscription" \
            --member "serviceAccount:${pubsub_agent}" --role roles/pubsub.subscriber
    done <<<"$listed"
    for subscription in $("${g[@]}" pubsub subscriptions list --format 'value(name.basename())'); do
        case "$subscription" in
            "${service}-trigger-"*)
                [[ "$declared" == *" $subscription "* ]] \
                    || run "${g[@]}" pubsub subscriptions delete "$subscription"
                ;;
        esac
    done
fi

if [ "$monitoring" = true ]; then
    echo "== Monitoring" >&2
    # Dashboards have no name to describe them by: look for the display name.
    title="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["displayName"])' "$here/dashboard.json")"
    existing="$("${g[@]}" monitoring dashboards list --filter "displayName=\"${title}\"" --format 'value(name)')"
    [ -n "$existing" ] \
        || run "${g[@]}" monitoring dashboards create --config-from-file "$here/dashboard.json"
fi

cat >&2 <<DONE
== Done. In env-vars.yaml (scripts/deploy.sh adds the first three when missing):
GOOGLE_CLOUD_PROJECT: '${project}'
PUSH_AUTH_AUDIENCE: '${url}'
PUSH_AUTH_SERVICE_ACCOUNT: '${push_account}'
ORCHESTRATION_TOPIC: '${topic}'
RESULT_TOPIC: '${results}'
PUSH_MAX_DELIVERY_ATTEMPTS: '${attempts}'
Next: scripts/deploy.sh ${project} ${region} ${service}
DONE
