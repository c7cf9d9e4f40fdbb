# Sourced by the other scripts: make sure .venv exists and holds chatd.
# Usage: . scripts/_venv.sh [EXTRAS]   (EXTRAS e.g. "dev")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
extras="${1:-}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "chatd needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.chatd-installed${extras:+-$extras}"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT${extras:+[$extras]}"
    touch "$stamp"
fi
