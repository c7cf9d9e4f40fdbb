#!/usr/bin/env bash
# Install chatd into .venv if needed and start the daemon (port 9999 unless told otherwise).
# Extra arguments go to 'chatd serve', e.g.: ./scripts/run.sh --host 0.0.0.0
set -euo pipefail
. "$(dirname "$0")/_venv.sh"
ensure_venv
exec "$VENV/bin/chatd" serve "$@"
