"""TensorRT's public names: optimization profiles and the backend.

    from aitune.torch.backend.tensorrt import ProfileMode, TensorRTProfile

    TensorRTBackend(TensorRTBackendConfig(profiles=ProfileMode.SAMPLES_USED))
    TensorRTBackend(TensorRTBackendConfig(profiles=[
        TensorRTProfile().add_input_shape("args_0", (1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))]))

How profiles are derived and checked: `aitune.torch.backend._tensorrt_profiles`; the backend:
`aitune.torch.backend._tensorrt`.
"""

from aitune.torch.backend._tensorrt import TensorRTBackend, TensorRTBackendConfig
from aitune.torch.backend._tensorrt_profiles import ProfileMode, TensorRTProfile

__all__ = ["ProfileMode", "TensorRTBackend", "TensorRTBackendConfig", "TensorRTProfile"]
