"""aitune override file: TensorRT with explicit optimization profiles, and Torch-TensorRT as a second candidate.

Use it with:
    AITUNE_JIT_CONFIG=configs/tensorrt_profiles.py AUTOWRAPT_BOOTSTRAP=aitune_enable_jit_tuning python infer.py

Needs `pip install 'aitune[tensorrt,torch-tensorrt]'` and a CUDA GPU. Inputs are named as the ONNX export names
them: `args_0` for the first positional tensor, the keyword for a keyword tensor (`input_ids`, ...); the tuning
log prints every input's name with its recorded min/max shape. A call whose shapes fall outside every profile
runs eagerly.
"""

from aitune.torch.backend import (
    ONNXAutoCastConfig,
    TensorRTBackend,
    TensorRTBackendConfig,
    TorchTensorRTConfig,
    TorchTensorRTJitBackend,
    TorchTensorRTJitBackendConfig,
)
from aitune.torch.backend.tensorrt import TensorRTProfile
from aitune.torch.jit.config import config

config.backends = [
    TensorRTBackend(TensorRTBackendConfig(
        profiles=[TensorRTProfile().add_input_shape("args_0", (1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))],
        quantization_config=ONNXAutoCastConfig(precision="fp16"),
        workspace_size=4 << 30,
        use_cuda_graphs=True,
    )),
    TorchTensorRTJitBackend(TorchTensorRTJitBackendConfig(
        compile_config=TorchTensorRTConfig(enabled_precisions=("fp16",), min_block_size=3),
    )),
]
