# shellcheck shell=bash
# Shared by the deploy and operations scripts: errors, tool checks, --dry-run.
# A script sets DRY_RUN=true for --dry-run; `run` then prints each command that
# would change something, quoted so that it can be pasted, instead of running it.
# Read-only look-ups (describe, list) still run, so a dry run shows what a real
# run would do now.

DRY_RUN=${DRY_RUN:-false}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 2
}

require_tool() {
    command -v "$1" >/dev/null 2>&1 || die "$1 is not installed or not on PATH: $2"
}

run() {
    if [ "$DRY_RUN" = true ]; then
        local quoted
        quoted=$(printf '%q ' "$@")
        printf '%s\n' "${quoted% }"
    else
        "$@"
    fi
}

# Succeeds when a read-only command (a `describe`) succeeds, quietly.
exists() {
    "$@" >/dev/null 2>&1
}

print_help() {
    # The comment block at the top of the calling script, without the shebang.
    sed -n '2,/^[^#]/p' "$1" | sed -e '/^[^#]/d' -e 's/^# \{0,1\}//'
}

# Sets DRY_RUN for --dry-run, prints the help for --help, refuses other options
# and collects the rest into the array `positional`.
parse_arguments() {
    local script="$1" argument
    shift
    positional=()
    for argument in "$@"; do
        case "$argument" in
            -h | --help) print_help "$script"; exit 0 ;;
            --dry-run) DRY_RUN=true ;;
            -*) die "unknown option $argument (see --help)" ;;
            *) positional+=("$argument") ;;
        esac
    done
}

# PROJECT REGION [SERVICE] from `positional`, into project, region and service.
# shellcheck disable=SC2034  # they are the caller's variables
project_region_service() {
    [ "${#positional[@]}" -ge 2 ] || die "PROJECT and REGION are required (see --help)"
    project="${positional[0]}"
    region="${positional[1]}"
    service="${positional[2]:-ml-orchestrator}"
    require_tool gcloud "install the Google Cloud SDK: https://cloud.google.com/sdk/docs/install"
}
