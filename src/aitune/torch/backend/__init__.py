"""Backends: each turns a module and its recorded samples into a faster engine.

Register your own with `register_backend`; config files name backends by their registered name.
"""

from aitune.torch.backend._base import Backend, BackendConfig, Engine
from aitune.torch.backend._eager import TorchEagerBackend, TorchEagerBackendConfig
from aitune.torch.backend._inductor import TorchInductorJitBackend, TorchInductorJitBackendConfig
from aitune.torch.backend._inductor_aot import TorchInductorAotBackend, TorchInductorAotBackendConfig
from aitune.torch.backend._onnxruntime import ONNXRuntimeBackend, ONNXRuntimeBackendConfig
from aitune.torch.backend._quantization import ONNXAutoCastConfig, ONNXQuantizationConfig, TorchQuantizationConfig
from aitune.torch.backend._registry import (
    backend_names,
    create_backend,
    get_backend_class,
    register_backend,
    unregister_backend,
)
from aitune.torch.backend._tensorrt import TensorRTBackend, TensorRTBackendConfig
from aitune.torch.backend._torch_tensorrt import (
    TorchTensorRTAotBackend,
    TorchTensorRTAotBackendConfig,
    TorchTensorRTConfig,
    TorchTensorRTJitBackend,
    TorchTensorRTJitBackendConfig,
)

for _cls in (TorchEagerBackend, TorchInductorJitBackend, TorchInductorAotBackend, ONNXRuntimeBackend, TensorRTBackend,
             TorchTensorRTJitBackend, TorchTensorRTAotBackend):
    register_backend(_cls)
del _cls

__all__ = [
    "Backend",
    "BackendConfig",
    "Engine",
    "ONNXAutoCastConfig",
    "ONNXQuantizationConfig",
    "ONNXRuntimeBackend",
    "ONNXRuntimeBackendConfig",
    "TensorRTBackend",
    "TensorRTBackendConfig",
    "TorchEagerBackend",
    "TorchEagerBackendConfig",
    "TorchInductorAotBackend",
    "TorchInductorAotBackendConfig",
    "TorchInductorJitBackend",
    "TorchInductorJitBackendConfig",
    "TorchQuantizationConfig",
    "TorchTensorRTAotBackend",
    "TorchTensorRTAotBackendConfig",
    "TorchTensorRTConfig",
    "TorchTensorRTJitBackend",
    "TorchTensorRTJitBackendConfig",
    "backend_names",
    "create_backend",
    "get_backend_class",
    "register_backend",
    "unregister_backend",
]
