"""The candidates JIT mode tries when the user configured none: what is installed and fits the device.

On CUDA: TensorRT (plain and with CUDA graphs) and Torch-TensorRT where their libraries import, TorchInductor
in its default mode and with CUDA graphs (mode="reduce-overhead": at small batch, launch overhead dominates
and CUDA graphs are where most of the speed is), and ONNX Runtime where it has a CUDA execution provider.
`TorchInductorJitBackend(mode="reduce-overhead", freezing=True)` is not among them yet: it won every bs1 row in
aitune's own timing on the H200 but served 2.5x slower than that inside the script (benchmarks/results/suite_h200).
On the CPU: TorchInductor and ONNX Runtime. Eager is not a candidate: every candidate is measured against it.

A backend left out because its library is missing, or because it declines the device, is named once per process
and device type in one INFO line, with the reason (the install command for a missing library).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from aitune.torch.backend._base import Backend
from aitune.torch.backend._optional import installed
from aitune.torch.backend._registry import backend_names, create_backend

logger = logging.getLogger(__name__)

_CUDA: list[tuple[str, dict[str, Any]]] = [
    ("TensorRTBackend", {}),
    ("TensorRTBackend", {"use_cuda_graphs": True}),
    ("TorchTensorRTJitBackend", {}),
    ("TorchInductorJitBackend", {}),
    ("TorchInductorJitBackend", {"mode": "reduce-overhead"}),
    ("ONNXRuntimeBackend", {}),
]
_CPU: list[tuple[str, dict[str, Any]]] = [
    ("TorchInductorJitBackend", {}),
    ("ONNXRuntimeBackend", {}),
]
#: Backends offered by default only when this library is installed, though they accept another when configured:
#: TensorRT-RTX builds engines but does not run them on data-center GPUs (Hopper), so it is opt-in.
_DEFAULT_NEEDS = {"TensorRTBackend": "tensorrt"}
#: (backend, device type) already named in a "not trying" line this process.
_reported: set[tuple[str, str]] = set()


def reset() -> None:
    """Name left-out backends again (for tests)."""
    _reported.clear()


def default_backends(device: torch.device) -> list[Backend]:
    """Fresh candidate backends for `device`, in the order they are tried."""
    registered = set(backend_names())
    chosen: list[Backend] = []
    for name, options in _CUDA if device.type == "cuda" else _CPU:
        if name not in registered:
            continue
        backend = create_backend(name, options)
        missing = backend.unavailable_reason()
        needs = _DEFAULT_NEEDS.get(name)
        if missing is None and needs is not None and not installed(needs):
            missing = f"not tried by default without {needs} (pip install 'aitune[{backend.extra}]')"
        if missing is None:
            # The backend's own device check (e.g. an onnxruntime without a CUDA execution provider).
            missing = backend.unsupported_reason(device)
        if missing is not None:
            if (name, device.type) not in _reported:
                _reported.add((name, device.type))
                logger.info("not trying %s on %s: %s", name, device.type, missing)
            continue
        chosen.append(backend)
    return chosen
