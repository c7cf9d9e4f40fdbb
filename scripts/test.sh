#!/usr/bin/env bash
# Create .venv with the dev extras if needed, then run ruff, mypy and the whole test suite.
# Extra arguments go to pytest, e.g.: ./scripts/test.sh -k protocol -x
set -euo pipefail
. "$(dirname "$0")/_venv.sh"
ensure_venv dev
cd "$ROOT"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
# pytest exits 5 when it collected no tests: that is a failure here, never a pass.
"$VENV/bin/python" -m pytest "$@"
