"""aitune for PyTorch (conventionally imported as `ait`).

JIT mode (zero code): `AUTOWRAPT_BOOTSTRAP=aitune_enable_jit_tuning python script.py`, see `aitune.torch.jit`.
Backends: `aitune.torch.backend`; strategies: `aitune.torch.tune_strategy`; global settings:
`aitune.torch.config.config`.
"""

from aitune.torch import backend, tune_strategy
from aitune.torch._errors import (
    AITuneError,
    BackendUnavailableError,
    ConfigError,
    DuplicateBackendError,
    TuningError,
    UnknownBackendError,
)
from aitune.torch.tune_strategy import (
    FirstWinsStrategy,
    HighestThroughputStrategy,
    OneBackendStrategy,
    TuneStrategy,
)

strategies = tune_strategy

__all__ = [
    "AITuneError",
    "BackendUnavailableError",
    "ConfigError",
    "DuplicateBackendError",
    "FirstWinsStrategy",
    "HighestThroughputStrategy",
    "OneBackendStrategy",
    "TuneStrategy",
    "TuningError",
    "UnknownBackendError",
    "backend",
    "strategies",
    "tune_strategy",
]
