#!/usr/bin/env bash
# Install chatd into .venv if needed and run the benchmark; arguments go to 'chatd bench'.
# Example: ./scripts/bench.sh --scenario fanout --duration 10
set -euo pipefail
. "$(dirname "$0")/_venv.sh"
ensure_venv
exec "$VENV/bin/chatd" bench "$@"
