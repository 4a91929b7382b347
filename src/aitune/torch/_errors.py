"""The exception hierarchy of aitune. Every error raised on purpose derives from AITuneError."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class AITuneError(Exception):
    """Base class of every aitune error."""


class ConfigError(AITuneError, ValueError):
    """A setting is invalid. `field` names it and `source` says where the value came from."""

    def __init__(self, message: str, *, field: str | None = None, source: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.source = source


class UnknownBackendError(ConfigError):
    """A backend name is not registered."""


class DuplicateBackendError(AITuneError):
    """A backend name is registered twice."""


class BackendUnavailableError(AITuneError):
    """A backend's optional library is missing; the message gives the install command."""

    def __init__(self, message: str, *, backend: str) -> None:
        super().__init__(message)
        self.backend = backend


class TuningError(AITuneError):
    """Tuning a module failed. Raised to the user only in strict mode."""

    def __init__(self, message: str, *, module_name: str | None = None, backend: str | None = None,
                 detail: Any = None) -> None:
        super().__init__(message)
        self.module_name = module_name
        self.backend = backend
        self.detail = detail


class TensorRTBuildError(AITuneError, RuntimeError):
    """Parsing the ONNX model or building the TensorRT engine failed; the message carries TensorRT's own."""


class UsageError(AITuneError, ValueError):
    """An argument of the explicit API (`ait.tune`, `ait.wrap`, `ait.inspect`) cannot be used; the message says
    what to pass instead. `obj` is the offending argument; `available` lists what exists, where that helps."""

    def __init__(self, message: str, *, obj: Any = None, available: list[str] | None = None) -> None:
        super().__init__(message)
        self.obj = obj
        self.available = available


class CheckpointError(AITuneError):
    """A checkpoint cannot be saved or loaded; `path` names the file."""

    def __init__(self, message: str, *, path: Path | str | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None


class CacheError(AITuneError):
    """The persistent cache directory (or the key that signs its entries) cannot be used; `path` names the file
    or directory at fault. JIT mode and `ait.tune` log it once and run without the cache."""

    def __init__(self, message: str, *, path: Path | str | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None


class ArchiveError(AITuneError):
    """A zip archive (a checkpoint, or an engine file inside one or in the cache) is over the configured limits
    or unreadable; `path` names it."""

    def __init__(self, message: str, *, path: Path | str | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None
