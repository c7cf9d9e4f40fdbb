# Sourced by the other scripts: defines ROOT, VENV and ensure_venv, which makes
# sure .venv exists and holds chatd. ensure_venv is a function so that its
# extras are its own arguments: a sourced file without arguments would see the
# sourcing script's (run.sh's --port 7000 as extras "--port").
# Usage: . scripts/_venv.sh; ensure_venv [EXTRAS]   (EXTRAS e.g. "dev")
#    or: scripts/_venv.sh [EXTRAS]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"

# True if one of these stamps exists and is newer than pyproject.toml.
_venv_installed() {
    local stamp
    for stamp in "$@"; do
        if [ -f "$stamp" ] && ! [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
            return 0
        fi
    done
    return 1
}

ensure_venv() {
    local extras="${1:-}"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || { echo "chatd needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
        "$PYTHON" -m venv "$VENV"
    fi
    local stamp="$VENV/.chatd-installed${extras:+-$extras}"
    local enough=("$stamp")
    # An install with extras holds chatd and its dependencies too.
    [ -n "$extras" ] || enough+=("$VENV"/.chatd-installed-*)
    if ! _venv_installed "${enough[@]}"; then
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        "$VENV/bin/python" -m pip install --quiet -e "$ROOT${extras:+[$extras]}"
        touch "$stamp"
    fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    ensure_venv "$@"
fi
