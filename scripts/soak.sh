#!/usr/bin/env bash
# Install chatd into .venv if needed, then soak it: connections churn against
# a fresh daemon (default 600 s, 50 clients at once) and its memory,
# descriptors and tasks at the end are compared with the start. Exit 1 on a leak.
# Example: ./scripts/soak.sh --seconds 1800 --workers 100
set -euo pipefail
. "$(dirname "$0")/_venv.sh"
ensure_venv
exec "$VENV/bin/python" -m chatd.soak "$@"
