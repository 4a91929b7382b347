"""Nested-structure helpers: walk, map and describe inputs and outputs made of tuples, lists, dicts,
namedtuples and dataclasses (including transformers' ModelOutput) with tensors and plain values as leaves.

Known limit: objects of other types are treated as opaque leaves, compared with `==` and keyed by type.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
from collections.abc import Callable, Iterator
from typing import Any

import torch

#: Leaf values that are hashable and stable enough to key a signature on their value.
_VALUE_LEAVES = (bool, int, float, str, bytes, type(None), torch.dtype, torch.device, torch.memory_format,
                 torch.layout, enum.Enum, type(Ellipsis), slice)


def _is_namedtuple(obj: Any) -> bool:
    return isinstance(obj, tuple) and hasattr(type(obj), "_fields")


def _dataclass_fields(obj: Any) -> list[str] | None:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [f.name for f in dataclasses.fields(obj)]
    return None


def children(obj: Any) -> list[tuple[Any, Any]] | None:
    """(key, child) pairs of a container, or None for a leaf."""
    if isinstance(obj, torch.Tensor):
        return None
    if isinstance(obj, dict):
        # dict first: transformers' ModelOutput is both an OrderedDict and a dataclass; its dict view holds
        # exactly the fields that are set.
        return list(obj.items())
    if isinstance(obj, (tuple, list)):
        return list(enumerate(obj))
    names = _dataclass_fields(obj)
    if names is not None:
        return [(n, getattr(obj, n)) for n in names]
    return None


def tree_map(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    """Rebuild `obj` with every tensor leaf replaced by `fn(tensor)`; other leaves are kept as they are."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        mapped = {k: tree_map(fn, v) for k, v in obj.items()}
        if type(obj) is dict:
            return mapped
        if dataclasses.is_dataclass(obj):
            # ModelOutput-like (an OrderedDict and a dataclass): its dict view holds the fields that are set.
            try:
                return type(obj)(**mapped)
            except Exception:  # a class that cannot be rebuilt from its fields: the plain dict keeps the data
                return mapped
        try:
            return type(obj)(mapped)
        except Exception:  # a mapping class that cannot be rebuilt from a dict: the plain dict keeps the data
            return mapped
    if _is_namedtuple(obj):
        return type(obj)(*(tree_map(fn, v) for v in obj))
    if isinstance(obj, tuple):
        return tuple(tree_map(fn, v) for v in obj)
    if isinstance(obj, list):
        return [tree_map(fn, v) for v in obj]
    names = _dataclass_fields(obj)
    if names is not None:
        new = copy.copy(obj)
        for n in names:
            object.__setattr__(new, n, tree_map(fn, getattr(obj, n)))
        return new
    return obj


def tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor leaf, depth first, in a stable order."""
    if isinstance(obj, torch.Tensor):
        yield obj
        return
    kids = children(obj)
    if kids is not None:
        for _, child in kids:
            yield from tensors(child)


def shapes_of(named: tuple[tuple[str, Any], ...]) -> tuple[tuple[int, ...], ...]:
    """Sizes of every tensor leaf of normalized inputs, in `tensors` order (fast for flat inputs)."""
    out: list[tuple[int, ...]] = []
    for _, value in named:
        if isinstance(value, torch.Tensor):
            out.append(tuple(value.shape))
        elif value is None or isinstance(value, (bool, int, float, str)):
            continue
        else:
            out.extend(tuple(t.shape) for t in tensors(value))
    return tuple(out)


def leaf_paths(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(path, leaf) pairs, paths like `args_0` or `kwargs.attention_mask` depending on the prefix given."""
    kids = children(obj)
    if kids is None:
        yield prefix, obj
        return
    for key, child in kids:
        yield from leaf_paths(child, f"{prefix}.{key}" if prefix else str(key))


def spec(obj: Any) -> Any:
    """A hashable description of the structure, tensor metadata (not sizes) and plain leaf values."""
    if isinstance(obj, torch.Tensor):
        return ("T", obj.dtype, obj.device, obj.dim(), obj.requires_grad, obj.layout)
    if isinstance(obj, _VALUE_LEAVES):
        try:
            hash(obj)
            return ("V", type(obj), obj)
        except TypeError:
            return ("O", type(obj).__qualname__)
    kids = children(obj)
    if kids is None:
        return ("O", type(obj).__module__, type(obj).__qualname__)
    return (type(obj).__qualname__, tuple((k, spec(v)) for k, v in kids))


def nbytes(obj: Any) -> int:
    return sum(t.element_size() * t.nelement() for t in tensors(obj))


def clone_outputs(obj: Any) -> Any:
    """Copy the tensors of a freshly returned output (autograd kept), reusing its containers where they are
    mutable: rebuilding e.g. a transformers ModelOutput costs more than the copies themselves."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        for k, v in list(obj.items()):
            obj[k] = clone_outputs(v)
        return obj
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            obj[i] = clone_outputs(v)
        return obj
    if isinstance(obj, tuple):
        items = [clone_outputs(v) for v in obj]
        return type(obj)(*items) if _is_namedtuple(obj) else tuple(items)
    names = _dataclass_fields(obj)
    if names is not None:
        for n in names:
            object.__setattr__(obj, n, clone_outputs(getattr(obj, n)))
        return obj
    return obj


def clone(obj: Any) -> Any:
    """A deep copy of the tensor leaves (detached), so later in-place edits by the caller cannot reach it."""
    return tree_map(lambda t: t.detach().clone(), obj)
