"""Optional third-party libraries of the backends: looked up without importing them, imported on first use,
and a clear "pip install aitune[extra]" message when they are missing.

`find_spec` only reads the import path, so checking availability at start-up or when choosing default
candidates never pays for importing TensorRT or ONNX Runtime.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from types import ModuleType

from aitune.torch._errors import BackendUnavailableError


@functools.cache
def installed(module_name: str) -> bool:
    """True when `module_name` can be found on the import path (it is not imported)."""
    try:
        return importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        return False


def first_installed(*module_names: str) -> str | None:
    """The first of `module_names` that is installed, or None."""
    return next((name for name in module_names if installed(name)), None)


def missing_reason(backend: str, extra: str, *module_names: str) -> str | None:
    """None when one of `module_names` is installed, else a message naming the install command."""
    if first_installed(*module_names) is not None:
        return None
    return f"{backend} needs {' or '.join(module_names)}, which is not installed: pip install 'aitune[{extra}]'"


def require(backend: str, extra: str, *module_names: str) -> ModuleType:
    """Import and return the first installed of `module_names`; BackendUnavailableError if none is."""
    reason = missing_reason(backend, extra, *module_names)
    if reason is not None:
        raise BackendUnavailableError(reason, backend=backend)
    name = first_installed(*module_names)
    assert name is not None
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise BackendUnavailableError(f"{backend}: {name} is installed but does not import ({e}); reinstall it "
                                      f"with pip install 'aitune[{extra}]'", backend=backend) from e
