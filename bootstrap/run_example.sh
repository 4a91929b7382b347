#!/usr/bin/env bash
# The README's first command: install, then run an unchanged example script (examples/infer_cnn.py) plainly and
# under the JIT hook, on whatever device this machine has. Prints both latencies, the speedup, what was tuned
# and aitune's summary table; the figures are also written to aitune_example.json, the hooked run's report to
# infer_cnn.report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
bash bootstrap/setup.sh
PY=${PYTHON:-python3}
"$PY" benchmarks/run.py examples/infer_cnn.py --json aitune_example.json --report-dir .
