"""`ait.wrap`: replace modules of a model or pipeline, by attribute path, with `ait.Module` wrappers in place.

Paths are dotted: attributes of objects and modules ("unet", "encoder.layer.0"), indices of lists and tuples,
keys of dicts; "" is the object itself (then `wrap` returns the new wrapper instead of the object).

Known limits: an element of a tuple cannot be replaced in place (the error says so).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from aitune.torch._errors import UsageError
from aitune.torch._explicit._module import Module, runtime_of
from aitune.torch.tune_strategy import TuneStrategy

logger = logging.getLogger(__name__)

_MISSING = object()


def wrap(pipeline: Any, modules: Sequence[Any] | Mapping[str, TuneStrategy | None]) -> Any:
    """Replace each named module of `pipeline` with `ait.Module(module, name)` and return `pipeline`.

    `modules`: `InspectResult.get_modules()`'s result, a list of attribute paths, or a dict path -> strategy
    (per-module strategies; None for the default). A module already wrapped is left as it is. An unknown path
    raises UsageError listing what exists there. When the path "" (the object itself) is given, the returned
    wrapper replaces `pipeline`: use the return value.
    """
    entries = _entries(modules)
    # Resolve every path before changing anything, so that a typo leaves the pipeline untouched.
    resolved = [(path, name, strategy, *_resolve(pipeline, path)) for path, name, strategy in entries]
    root = pipeline
    for path, name, strategy, parent, key, current in resolved:
        if path == "":
            current = root
        if runtime_of(current) is not None:
            logger.debug("%s is already an ait.Module", path or type(pipeline).__name__)
            continue
        if not isinstance(current, torch.nn.Module):
            raise UsageError(f"{path!r} is a {type(current).__name__}, not a torch.nn.Module: only modules can be "
                             f"wrapped", obj=current)
        wrapper = Module(current, name or path or type(current).__name__, strategy)
        if path == "":
            root = wrapper
        else:
            _assign(parent, key, wrapper, path)
        logger.info("wrapped %s (%s) with ait.Module", path or type(current).__name__, type(current).__name__)
    return root


def _entries(modules: Any) -> list[tuple[str, str | None, TuneStrategy | None]]:
    if isinstance(modules, str):
        modules = [modules]
    if isinstance(modules, Mapping):
        return [(str(path), None, strategy) for path, strategy in modules.items()]
    entries: list[tuple[str, str | None, TuneStrategy | None]] = []
    for item in modules:
        if isinstance(item, str):
            entries.append((item, None, None))
        elif hasattr(item, "path"):
            entries.append((str(item.path), getattr(item, "name", None), getattr(item, "strategy", None)))
        else:
            raise UsageError(f"ait.wrap takes attribute paths (e.g. 'unet', 'encoder.layer.0'), a dict path -> "
                             f"strategy, or InspectResult.get_modules(); got {type(item).__name__}", obj=item)
    return entries


def _resolve(root: Any, path: str) -> tuple[Any, str, Any]:
    """(parent, last key, object) at `path`; for "" (None, "", root)."""
    if path == "":
        return None, "", root
    parent: Any = None
    current = root
    done: list[str] = []
    for key in path.split("."):
        child = _child(current, key)
        if child is _MISSING:
            where = ".".join(done) or type(root).__name__
            available = _available(current)
            raise UsageError(f"ait.wrap: {path!r} not found: {where} has no {key!r}; it has: "
                             f"{', '.join(available) or 'nothing that holds a module'}", obj=path,
                             available=available)
        parent, current = current, child
        done.append(key)
    return parent, path.split(".")[-1], current


def _child(obj: Any, key: str) -> Any:
    if isinstance(obj, torch.nn.Module):
        modules = obj._modules
        if key in modules:
            return modules[key]
        return getattr(obj, key, _MISSING) if not key.startswith("_") else _MISSING
    if isinstance(obj, (list, tuple)):
        try:
            return obj[int(key)]
        except (ValueError, IndexError):
            return _MISSING
    if isinstance(obj, dict):
        return obj.get(key, _MISSING)
    return getattr(obj, key, _MISSING)


def _available(obj: Any) -> list[str]:
    if isinstance(obj, torch.nn.Module):
        return [k for k, v in obj._modules.items() if v is not None]
    if isinstance(obj, (list, tuple)):
        return [str(i) for i in range(len(obj))]
    if isinstance(obj, dict):
        return [str(k) for k in obj]
    try:
        items = vars(obj).items()
    except TypeError:
        return []
    return [k for k, v in items if isinstance(v, (torch.nn.Module, list, tuple, dict)) and not k.startswith("_")]


def _assign(parent: Any, key: str, wrapper: Module, path: str) -> None:
    if isinstance(parent, list):
        parent[int(key)] = wrapper
    elif isinstance(parent, dict):
        parent[key] = wrapper
    elif isinstance(parent, tuple):
        raise UsageError(f"ait.wrap: {path!r} is an element of a tuple, which cannot be changed in place; store the "
                         f"modules in a list, or wrap the module yourself with ait.Module", obj=path)
    else:
        setattr(parent, key, wrapper)
