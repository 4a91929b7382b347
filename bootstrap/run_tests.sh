#!/usr/bin/env bash
# The README's second command (and CI's): install, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash bootstrap/setup.sh
PY=${PYTHON:-python3}
exec "$PY" -m pytest -q "$@"
