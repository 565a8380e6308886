# shellcheck shell=bash
# Sourced by the scripts: makes .venv with the project and its dev tools, once and
# again whenever pyproject.toml or requirements.lock changes: the runtime dependencies
# exactly as locked (hashes checked, as in the image), then the project and dev tools.
# Needs Python >= 3.11 as python3 (or $PYTHON).

ensure_venv() {
    local root python stamp
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    python="${PYTHON:-python3}"
    if ! command -v "$python" >/dev/null 2>&1; then
        echo "error: $python not found; install Python 3.11 or newer" >&2
        return 1
    fi
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "error: Python 3.11 or newer is needed ($python is $("$python" -V 2>&1))" >&2
        return 1
    fi
    if [ ! -x "$root/.venv/bin/python" ]; then
        echo "Creating .venv ..." >&2
        "$python" -m venv "$root/.venv"
    fi
    stamp="$root/.venv/.installed"
    if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ] \
        || [ "$root/requirements.lock" -nt "$stamp" ]; then
        echo "Installing the project and its dev tools into .venv ..." >&2
        "$root/.venv/bin/python" -m pip install --quiet --upgrade pip
        "$root/.venv/bin/python" -m pip install --quiet --require-hashes \
            -r "$root/requirements.lock"
        "$root/.venv/bin/python" -m pip install --quiet -e "${root}[dev]"
        touch "$stamp"
    fi
}

# The start of the scripts that run project code: --help prints the script's header
# comment; otherwise it moves to the project root and makes sure .venv is ready.
enter_project() {
    local script="$1" root
    case "${2:-}" in
        -h | --help)
            sed -n '2,/^[^#]/p' "$script" | sed -e '/^[^#]/d' -e 's/^# \{0,1\}//'
            exit 0
            ;;
    esac
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    cd "$root" || exit 2
    ensure_venv
}
