"""aitune for PyTorch (conventionally imported as `ait`).

Explicit API: `ait.Module(module)` marks a module, `ait.tune(model, dataset)` records and tunes the marked
modules, `ait.inspect(pipeline, dataset)` shows where time goes and `ait.wrap(pipeline, modules)` marks modules
by attribute path; `ait.save` / `ait.load` ship tuned engines; `ait.wait()` waits for background tuning.
JIT mode (zero code): `AUTOWRAPT_BOOTSTRAP=aitune_enable_jit_tuning python script.py`, see `aitune.torch.jit`.
Backends: `aitune.torch.backend`; strategies: `aitune.torch.tune_strategy`; global settings: `ait.config`
(also `aitune.torch.config.config`); JIT settings: `ait.jit_config` (also `aitune.torch.jit.config.config`).

Where things live:
- The fail-open policy: `_signature/_route.py` (`FAIL_OPEN`), used by both fronts: aitune's own failure warns once
  and the call runs eagerly; strict mode raises.
- The sample cap: `_signature/_record.py` (`BUDGET`), one process-wide byte budget for the samples of both fronts.
- Winner installation: `_signature/_decide.py` (`decide` and `commit`): the winner is installed on the signature,
  or it stays eager with the reason, for JIT mode and `ait.tune` alike.
- The explicit API: `_explicit/` (`ait.Module`, `ait.tune`, `ait.inspect`, `ait.wrap`, `ait.save`, `ait.load`),
  re-exported here.
- JIT mode: `jit/` (discovery and hierarchy, the per-call glue, the top-down walk, report, the hook).
- Below both fronts: `_signature/` (one input signature's life), `backend/`, `tune_strategy/`, `cache/`,
  `_settings/` (sources, scopes by registration), and the helpers `_samples`, `_tree`, `_checking`, `_timing`,
  `_fingerprint`, `_archive`, `_units`, `_errors` (every public error).
"""

# torch first, before any submodule of ours starts importing: under AUTOWRAPT_BOOTSTRAP the JIT hook fires when
# torch finishes importing and imports aitune.torch.jit, which must not find one of our modules half-imported
# (a script that does `import aitune.torch as ait` before `import torch`).
import torch  # noqa: F401  # isort: skip

from aitune.torch import backend, config, tune_strategy
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
from aitune.torch._explicit._api import tune
from aitune.torch._explicit._checkpoint import load, save
from aitune.torch._explicit._inspect import InspectResult, inspect
from aitune.torch._explicit._module import Module
from aitune.torch._explicit._wrap import wrap
from aitune.torch._signature._background import wait
from aitune.torch.tune_strategy import (
    FirstWinsStrategy,
    HighestThroughputStrategy,
    MaxThroughputStrategy,
    OneBackendStrategy,
    TuneStrategy,
)

strategies = tune_strategy


def __getattr__(name: str) -> object:
    """`ait.jit_config` / `from aitune.torch import jit_config`: the JIT settings object; `patch_for_jit_tuning`,
    `prepare_for_jit_tuning` (`aitune.torch.jit._entry`). Imported on first use; importing them enables nothing."""
    if name == "jit_config":
        from aitune.torch.jit.config import config as jit_settings

        return jit_settings
    if name in ("patch_for_jit_tuning", "prepare_for_jit_tuning"):
        from aitune.torch.jit import _entry

        return getattr(_entry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
    "MaxThroughputStrategy",
    "Module",
    "OneBackendStrategy",
    "TuneStrategy",
    "TuningError",
    "UnknownBackendError",
    "UsageError",
    "backend",
    "config",
    "inspect",
    "jit_config",
    "patch_for_jit_tuning",
    "prepare_for_jit_tuning",
    "load",
    "save",
    "strategies",
    "tune",
    "tune_strategy",
    "wait",
    "wrap",
]
