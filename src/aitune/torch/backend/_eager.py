"""TorchEagerBackend: the module itself, run eagerly. The reference every candidate is measured against,
and a candidate of its own (e.g. for `OneBackendStrategy` when a user wants recording without compiling)."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch

from aitune.torch._samples import Sample, SignatureRecord
from aitune.torch.backend._base import Backend, BackendConfig, Engine


class TorchEagerBackendConfig(BackendConfig):
    """TorchEagerBackend has no settings."""


class _EagerEngine(Engine):
    def __init__(self, module: torch.nn.Module) -> None:
        self._module = weakref.ref(module)  # an engine never keeps its module alive

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module = self._module()
        if module is None:
            raise RuntimeError("the module of this engine was garbage-collected")
        # forward itself: aitune runs the module's own hooks around every engine, this one included.
        return module.forward(*args, **kwargs)


class TorchEagerBackend(Backend):
    """Runs the module unchanged."""

    config_class = TorchEagerBackendConfig
    kind = "jit"
    supports_autograd = True

    def serves_new_sizes(self, device: torch.device) -> bool:
        return True

    def keeps_aliases(self, device: torch.device) -> bool:
        return True

    def build(self, module: torch.nn.Module, signature: SignatureRecord, samples: Sequence[Sample],
              device: torch.device) -> Engine:
        return _EagerEngine(module)
