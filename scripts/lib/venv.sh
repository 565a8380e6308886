# shellcheck shell=bash
# Sourced by the scripts: makes .venv with the project and its dev tools, once and
# again whenever pyproject.toml changes. Needs Python >= 3.11 as python3 (or $PYTHON).

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
    if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
        echo "Installing the project and its dev tools into .venv ..." >&2
        "$root/.venv/bin/python" -m pip install --quiet --upgrade pip
        "$root/.venv/bin/python" -m pip install --quiet -e "${root}[dev]"
        touch "$stamp"
    fi
}
