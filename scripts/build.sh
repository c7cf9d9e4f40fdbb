#!/usr/bin/env bash
# Build a wheel and an sdist into dist/.
set -euo pipefail
. "$(dirname "$0")/_venv.sh"
ensure_venv dev
cd "$ROOT"
"$VENV/bin/python" -m pip install --quiet build
"$VENV/bin/python" -m build --outdir dist .
ls -l dist
