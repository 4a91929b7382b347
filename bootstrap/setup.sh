#!/usr/bin/env bash
# Installs aitune, its test dependencies and the optional backends that install from PyPI on any machine
# (ONNX Runtime, TensorRT-RTX for the TensorRT build half, ModelOpt) into the current Python environment.
# torch is pinned first when missing: a bare `torch` requirement would pull a multi-GB CUDA build on a machine
# without a GPU. Where torch is already installed (a GPU machine), it is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        echo "aitune setup: installing torch (CUDA build, this machine has a GPU)..."
        "$PY" -m pip install -q "torch>=2.11"
    else
        echo "aitune setup: installing torch 2.13.0 (CPU build)..."
        "$PY" -m pip install -q "torch==2.13.0"
    fi
fi
echo "aitune setup: installing aitune (editable) with its test tools and the ONNX Runtime, TensorRT-RTX and ModelOpt extras..."
"$PY" -m pip install -q -e ".[test,onnxruntime,tensorrt-rtx,modelopt]"
echo "aitune setup: done"
