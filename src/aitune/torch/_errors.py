"""The exception hierarchy of aitune. Every error raised on purpose derives from AITuneError."""

from __future__ import annotations

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


class UsageError(AITuneError, ValueError):
    """An argument of the explicit API (`ait.tune`, `ait.wrap`, `ait.inspect`) cannot be used; the message says
    what to pass instead. `obj` is the offending argument; `available` lists what exists, where that helps."""

    def __init__(self, message: str, *, obj: Any = None, available: list[str] | None = None) -> None:
        super().__init__(message)
        self.obj = obj
        self.available = available
