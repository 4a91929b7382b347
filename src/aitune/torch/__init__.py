"""aitune for PyTorch (conventionally imported as `ait`).

Explicit API: `ait.Module(module)` marks a module, `ait.tune(model, dataset)` records and tunes the marked
modules, `ait.inspect(pipeline, dataset)` shows where time goes and `ait.wrap(pipeline, modules)` marks modules
by attribute path.
JIT mode (zero code): `AUTOWRAPT_BOOTSTRAP=aitune_enable_jit_tuning python script.py`, see `aitune.torch.jit`.
Backends: `aitune.torch.backend`; strategies: `aitune.torch.tune_strategy`; global settings:
`aitune.torch.config.config`.
"""

# torch first, before any submodule of ours starts importing: under AUTOWRAPT_BOOTSTRAP the JIT hook fires when
# torch finishes importing and imports aitune.torch.jit, which must not find one of our modules half-imported
# (a script that does `import aitune.torch as ait` before `import torch`).
import torch  # noqa: F401  # isort: skip

from aitune.torch import backend, tune_strategy
from aitune.torch._api import tune
from aitune.torch._checkpoint import load, save
from aitune.torch._errors import (
    AITuneError,
    BackendUnavailableError,
    CacheError,
    CheckpointError,
    ConfigError,
    DuplicateBackendError,
    TuningError,
    UnknownBackendError,
    UsageError,
)
from aitune.torch._inspect import InspectResult, inspect
from aitune.torch._module import Module
from aitune.torch._wrap import wrap
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
    "CacheError",
    "CheckpointError",
    "ConfigError",
    "DuplicateBackendError",
    "FirstWinsStrategy",
    "HighestThroughputStrategy",
    "InspectResult",
    "Module",
    "OneBackendStrategy",
    "TuneStrategy",
    "TuningError",
    "UnknownBackendError",
    "UsageError",
    "backend",
    "inspect",
    "load",
    "save",
    "strategies",
    "tune",
    "tune_strategy",
    "wrap",
]
