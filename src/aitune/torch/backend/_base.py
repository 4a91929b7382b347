"""The Backend contract: build an engine from a module and its recorded samples, then run it.

A backend is described by a frozen pydantic config (its engine-relevant settings, which form cache keys),
declares the devices it supports and whether its artifact can be saved (AOT) or is rebuilt in each process
(JIT). Optional third-party imports happen inside `build`, never at import time of aitune.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from aitune.torch._samples import Sample, SignatureRecord


class BackendConfig(BaseModel):
    """Base of every backend's settings: frozen, and unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class Engine(abc.ABC):
    """A built, runnable replacement for one module on one input signature.

    Called exactly like the module (same positional and keyword arguments); returns the same structure.
    """

    #: True when the engine holds its own copy of the weights (TensorRT, ONNX Runtime, AOT packages), so
    #: any in-place change of the module's parameters makes it stale. Engines that read the live parameters
    #: (torch.compile) keep following them.
    bakes_weights: bool = False
    #: True when the engine reads the weights at the addresses they had when it was built (a CUDA graph that
    #: aitune captured): in-place writes flow through, but a weight moved to new memory makes it stale.
    binds_weight_storage: bool = False

    @abc.abstractmethod
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def release(self) -> None:  # noqa: B027 - optional hook
        """Free what the engine holds (GPU memory, sessions). Called when it is dropped."""

    def save(self, directory: Path) -> None:
        """Write the engine's artifact into the existing, empty `directory` (AOT engines only).

        Only plain data goes there (engine plans, ONNX files, AOTInductor packages, JSON): loading it back
        through the backend's `load` must never unpickle arbitrary objects.
        """
        raise NotImplementedError(f"{type(self).__name__} has no artifact to save; it is rebuilt in each process")


class Backend(abc.ABC):
    """Base of every backend. Subclasses set `config_class`, `kind` and implement `build`."""

    config_class: ClassVar[type[BackendConfig]] = BackendConfig
    #: "jit": runs the module's Python (torch.compile), rebuilt in each process unless it saves a whole-graph
    #: function (TorchInductorJitBackend); "aot": its artifact runs no Python and can be saved and loaded.
    kind: ClassVar[Literal["jit", "aot"]] = "jit"
    #: Device types the backend can build for.
    device_types: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    #: Name of the pip extra that installs the backend's optional library, if it has one.
    extra: ClassVar[str | None] = None
    #: True when its engines hold their own copy of the weights (see `Engine.bakes_weights`): such backends are
    #: not tried again for a module whose weights changed in place under one of their engines. Set per instance
    #: where it depends on the settings (TorchInductorJitBackend with `freezing`).
    bakes_weights: bool = False
    #: True when its engines carry autograd (outputs with a graph, backward as eager's): only such backends serve
    #: calls that need it (grad enabled, parameters or inputs requiring grad).
    supports_autograd: ClassVar[bool] = False
    #: True when loading a saved artifact runs code from it (a compiled shared library, a pickle). A property of
    #: the class, never read from a file: checkpoints rebuild such engines instead of loading them unless the
    #: user passes `trust_native_code=True`, and the persistent cache loads them only from signed entries.
    artifact_runs_code: ClassVar[bool] = False

    def __init__(self, config: BackendConfig | None = None, **options: Any) -> None:
        if config is not None and options:
            raise TypeError(f"{type(self).__name__}: pass either a config object or keyword options, not both")
        if config is None:
            config = self.config_class(**options)
        elif not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} expects a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config = config

    @property
    def name(self) -> str:
        return type(self).__name__

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when the backend's libraries are importable, else a message with the install command."""
        return None

    def unsupported_reason(self, device: torch.device) -> str | None:
        """None when the backend can build for `device`, else why not."""
        if device.type not in self.device_types:
            return f"{self.name} does not support device type {device.type!r} (supports {', '.join(self.device_types)})"
        return None

    def serves_new_sizes(self, device: torch.device) -> bool:
        """True when its engines compile sizes symbolically, so they can serve sizes beyond those they were built
        and checked on along dimensions that varied (after live confirmation, `_signature._route`). False for
        engines with fixed profiles (TensorRT) or one CUDA graph per size."""
        return False

    def exports_program(self) -> bool:
        """True when building runs torch.export, which patches torch process-wide while it traces: another thread's
        eager call at that moment would run through the tracer. Such backends are not tried while several threads
        call modules (`_signature._route.CALLERS`)."""
        return False

    def keeps_aliases(self, device: torch.device) -> bool:
        """True when its engines return the very tensors (or views of them) that the module returns of its own
        parameters, buffers or inputs, so a caller's in-place edit of such an output reaches them as in eager."""
        return False

    def uses_cuda_graphs(self, device: torch.device) -> bool:
        """True when its engines replay CUDA graphs on `device` (their outputs live in graph-owned memory)."""
        return False

    def engine_settings(self) -> dict[str, Any]:
        """The settings that change a built engine (used in cache keys and the report)."""
        return self.config.model_dump(mode="json")

    def describe(self) -> str:
        """Short description for logs: the name and the settings that differ from the defaults."""
        return f"{self.name}{_changed_fields(self.config)}"

    def __repr__(self) -> str:
        return self.describe()

    @abc.abstractmethod
    def build(self, module: torch.nn.Module, signature: SignatureRecord, samples: Sequence[Sample],
              device: torch.device) -> Engine:
        """Build an engine for `module` on the input signature that `samples` belong to.

        Raise any exception to reject the candidate; the strategy records it and moves on.
        """

    def load(self, directory: Path, module: torch.nn.Module, signature: SignatureRecord, samples: Sequence[Sample],
             device: torch.device, *, authenticated: bool = False) -> Engine:
        """Load an engine that `Engine.save` wrote into `directory` (AOT backends only).

        `samples` are recorded in the loading process (their eager outputs give the output structure); the
        caller checks the loaded engine against them before it serves a call. `authenticated`: the files were
        written by this user's aitune and their signature verified (a persistent-cache entry), so metadata in them
        may be relied on; a checkpoint's files are not (loading decides nothing on what they say about
        themselves). Whether loading may run code from the files is the class's `artifact_runs_code`, decided by
        the caller before it calls `load`.
        """
        raise NotImplementedError(f"{self.name} is a {self.kind.upper()} backend: its engines are rebuilt, not loaded")


def _changed_fields(config: BaseModel) -> str:
    """`(a=1, inner=Other(b=2))` for the fields that differ from their defaults; empty when none do."""
    changed = config.model_dump(exclude_defaults=True, mode="json")
    parts = []
    for key, value in changed.items():
        live = getattr(config, key, None)
        if isinstance(live, BaseModel):
            parts.append(f"{key}={type(live).__name__}{_changed_fields(live)}")
        else:
            parts.append(f"{key}={value!r}")
    return f"({', '.join(parts)})" if parts else ""
