"""Backend registry: backends are registered by name (their class name) and created from plain data.

Used by the TOML override files and env vars, which name backends as strings.
"""

from __future__ import annotations

import difflib
from typing import Any

from aitune.torch._errors import DuplicateBackendError, UnknownBackendError
from aitune.torch.backend._base import Backend

_REGISTRY: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend], *, name: str | None = None) -> type[Backend]:
    """Register `cls` under `name` (default: its class name). Usable as a decorator."""
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"register_backend expects a Backend subclass, got {cls!r}")
    key = name or cls.__name__
    existing = _REGISTRY.get(key)
    if existing is not None and existing is not cls:
        raise DuplicateBackendError(
            f"backend name {key!r} is already registered by {existing.__module__}.{existing.__qualname__}; "
            f"cannot register {cls.__module__}.{cls.__qualname__} under the same name"
        )
    _REGISTRY[key] = cls
    return cls


def unregister_backend(name: str) -> None:
    _REGISTRY.pop(name, None)


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def get_backend_class(name: str) -> type[Backend]:
    """Look a backend up by name; the error lists the registered names and the closest match."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = backend_names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownBackendError(
            f"unknown backend {name!r}.{hint} Registered backends: {', '.join(known)}", field="backends"
        ) from None


def create_backend(name: str, options: dict[str, Any] | None = None) -> Backend:
    """Create a backend from its registered name and its config fields (pydantic validates them)."""
    cls = get_backend_class(name)
    return cls(**(options or {}))
