#!/usr/bin/env bash
# What was run on the GPU machine (device tool) for the README's figures. Installs the carried wheels
# (pydantic-settings, autowrapt... that machine lacks) into its Python, then aitune itself, then benchmarks.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-build-isolation .whl/*.whl . 2>&1 | grep -v WARNING
python3 -c "import aitune.torch, autowrapt, torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
for spec in "$@"; do
    script=${spec%%:*}; batch=${spec##*:}
    python3 benchmarks/run.py "benchmarks/scripts/$script.py" --env BENCH_BATCH="$batch" \
        --json "$OUT/${script}_bs${batch}.json" 2>&1 | tee "$OUT/${script}_bs${batch}.log"
    # The hand-tuned reference on the same machine, right after.
    BENCH_MODEL=$script BENCH_BATCH=$batch python3 benchmarks/scripts/manual_compile.py 2>&1 | grep -v Warning \
        | tail -2 | tee -a "$OUT/${script}_bs${batch}.log"
done
