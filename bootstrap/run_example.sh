#!/usr/bin/env bash
# The README's first command: install, then run an unchanged example script under the JIT hook on whatever
# device this machine has. The summary on stderr shows what was tuned and the speedup; the JSON report is
# written to aitune_report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
bash bootstrap/setup.sh
PY=${PYTHON:-python3}
export AITUNE_JIT_REPORT=${AITUNE_JIT_REPORT:-$PWD/aitune_report.json}
echo "== eager (no aitune) =="
"$PY" examples/infer_cnn.py
echo "== with AUTOWRAPT_BOOTSTRAP=aitune_enable_jit_tuning =="
AUTOWRAPT_BOOTSTRAP=aitune_enable_jit_tuning "$PY" examples/infer_cnn.py
