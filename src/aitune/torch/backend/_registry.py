"""Backend registry: backends are registered by name (their class name) and created from plain data.
Names are matched exactly, then case-insensitively (`_` and a trailing "Backend" optional), then by short name.

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


#: Short names (compared as `_normalized` spells them) for the built-in backends.
SHORT_NAMES = {
    "inductor": "TorchInductorJitBackend", "torchcompile": "TorchInductorJitBackend",
    "inductoraot": "TorchInductorAotBackend", "aotinductor": "TorchInductorAotBackend",
    "onnxruntime": "ONNXRuntimeBackend", "onnx": "ONNXRuntimeBackend", "ort": "ONNXRuntimeBackend",
    "tensorrt": "TensorRTBackend", "trt": "TensorRTBackend",
    "torchtensorrt": "TorchTensorRTJitBackend", "torchtrt": "TorchTensorRTJitBackend",
    "torchtensorrtaot": "TorchTensorRTAotBackend", "torchtrtaot": "TorchTensorRTAotBackend",
    "eager": "TorchEagerBackend",
}


def _normalized(name: str) -> str:
    """Case, `_`, `-`, spaces and a trailing "backend" do not matter: `onnx_runtime`, `ONNXRuntime`."""
    text = "".join(ch for ch in name.lower() if ch.isalnum())
    return text.removesuffix("backend") or text


def get_backend_class(name: str) -> type[Backend]:
    """Look a backend up by its registered name, case-insensitively, or by a short name (`inductor`,
    `onnxruntime`, `tensorrt`, see `SHORT_NAMES`); the error names the closest match and lists the names."""
    found = _REGISTRY.get(name)
    if found is not None:
        return found
    by_name = _names_by_normalized()
    wanted = _normalized(name)
    if wanted in by_name:
        return _REGISTRY[by_name[wanted]]
    raise UnknownBackendError(f"unknown backend {name!r}.{closest_backend_hint(name)} {known_backends_text()}",
                              field="backends") from None


def _names_by_normalized() -> dict[str, str]:
    by_name = {_normalized(n): n for n in _REGISTRY}
    by_name.update({short: full for short, full in SHORT_NAMES.items() if full in _REGISTRY})
    return by_name


def closest_backend_hint(name: str) -> str:
    """` Did you mean 'X'?` for a near miss of a registered or short name, else empty."""
    by_name = _names_by_normalized()
    close = difflib.get_close_matches(_normalized(name), list(by_name), n=1, cutoff=0.7)
    return f" Did you mean {by_name[close[0]]!r}?" if close else ""


def known_backends_text() -> str:
    """The registered names and the short names, in one sentence."""
    shorts = ", ".join(sorted(short for short, full in SHORT_NAMES.items() if full in _REGISTRY))
    return f"Registered backends: {', '.join(backend_names())} (case does not matter; short names: {shorts})"


def create_backend(name: str, options: dict[str, Any] | None = None) -> Backend:
    """Create a backend from its registered name and its config fields (pydantic validates them)."""
    cls = get_backend_class(name)
    return cls(**(options or {}))
