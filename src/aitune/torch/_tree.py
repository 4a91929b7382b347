"""Nested-structure helpers: walk, map, copy and describe inputs and outputs made of tuples, lists, dicts,
namedtuples and dataclasses (including transformers' ModelOutput) with tensors and plain values as leaves.

Containers (`children`) are what `tree_map` rebuilds and what engines that run no Python flatten. Other Python
objects that carry state in their attributes (a transformers `DynamicCache` or `StaticCache`, a user's object)
are state objects: `parts` and `all_tensors` walk into them (to describe, compare and size them), `clone` copies
them whole (`copy.deepcopy`, with the tensors inside copied once, aliasing kept), and `tree_map` keeps them as they
are. Modules, functions, classes and objects without attributes stay opaque leaves, compared with `==`.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import types
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


#: Objects never walked into or copied: they are code, or too big to be a call's state.
_NOT_STATE = (torch.nn.Module, type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
              types.MethodType, torch.Generator,
              *(t for t in (getattr(torch, "Stream", None), getattr(torch, "Event", None)) if isinstance(t, type)))


def state_fields(obj: Any) -> list[tuple[str, Any]] | None:
    """The attributes of a state object (see the module docstring), sorted by name; None for anything else."""
    if isinstance(obj, (torch.Tensor, *_VALUE_LEAVES, *_NOT_STATE)) or children(obj) is not None:
        return None
    attributes = getattr(obj, "__dict__", None)
    if not isinstance(attributes, dict):
        return None
    return sorted(attributes.items())


def parts(obj: Any) -> list[tuple[Any, Any]] | None:
    """(key, child) pairs of a container or a state object, or None for a leaf."""
    kids = children(obj)
    return kids if kids is not None else state_fields(obj)


def all_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor, state objects included, each object visited once, in a stable order."""
    seen: set[int] = set()

    def walk(value: Any) -> Iterator[torch.Tensor]:
        if isinstance(value, torch.Tensor):
            yield value
            return
        kids = parts(value)
        if kids is None or id(value) in seen:
            return
        seen.add(id(value))
        for _, child in kids:
            yield from walk(child)

    yield from walk(obj)


def holds_state(obj: Any) -> bool:
    """Does `obj` hold a state object (see the module docstring) anywhere?"""
    if isinstance(obj, torch.Tensor):
        return False
    kids = children(obj)
    if kids is None:
        return state_fields(obj) is not None
    return any(holds_state(child) for _, child in kids)


def state_tensors(obj: Any) -> list[torch.Tensor]:
    """The tensors held by the state objects in `obj` (not its plain tensor leaves)."""
    found: list[torch.Tensor] = []
    if isinstance(obj, torch.Tensor):
        return found
    kids = children(obj)
    if kids is None:
        if state_fields(obj) is not None:
            found.extend(all_tensors(obj))
        return found
    for _, child in kids:
        found.extend(state_tensors(child))
    return found


def static_address(t: torch.Tensor) -> bool:
    """Marked with `torch._dynamo.mark_static_address` (transformers' StaticCache marks its tensors so): its
    memory is allocated once and updated in place, so a CUDA graph may read and write it where it is."""
    return getattr(t, "_dynamo_static_input_type", None) is not None


class Uncopyable(Exception):
    """A call's inputs hold an object that cannot be copied (so aitune cannot run the call on a copy)."""


def tree_map(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    """Rebuild `obj` with every tensor leaf replaced by `fn(tensor)`; other leaves are kept as they are."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    return tree_map_with(lambda child: tree_map(fn, child), obj)


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


def spec(obj: Any, _open: frozenset[int] = frozenset()) -> Any:
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
    if kids is not None:
        return (type(obj).__qualname__, tuple((k, spec(v, _open)) for k, v in kids))
    fields = state_fields(obj)
    if fields is None:
        return ("O", type(obj).__module__, type(obj).__qualname__)
    if id(obj) in _open:
        return ("cycle", type(obj).__qualname__)
    # A state object: its structure, its tensors' metadata and its flags, not its numbers (a step counter would
    # otherwise make every call a new signature). A cache before and after its first update differ.
    inner = _open | {id(obj)}
    return ("S", type(obj).__module__, type(obj).__qualname__,
            tuple((k, _state_spec(v, inner)) for k, v in fields))


def _state_spec(value: Any, _open: frozenset[int]) -> Any:
    if isinstance(value, (bool, type(None), str, enum.Enum)):
        return ("V", type(value), value)
    if isinstance(value, (int, float)):
        return ("N", type(value))
    return spec(value, _open)


def nbytes(obj: Any) -> int:
    return sum(t.element_size() * t.nelement() for t in all_tensors(obj))


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
    """A deep copy that shares nothing with `obj`: tensors copied (detached into leaves that keep the original's
    `requires_grad`; one copy for a tensor that appears twice), containers rebuilt, state objects copied whole.
    Later in-place edits of either side never reach the other. Raises Uncopyable for a state object that cannot be
    copied."""
    memo: dict[int, Any] = {}

    def copy_tensor(t: torch.Tensor) -> torch.Tensor:
        found = memo.get(id(t))
        if found is None:
            found = t.detach().clone()
            if t.requires_grad:
                found.requires_grad_(True)  # a leaf that says what the original said (checked like a dtype)
            static = getattr(t, "_dynamo_static_input_type", None)
            if static is not None:  # torch._dynamo.mark_static_address: compiled as the original would be
                found._dynamo_static_input_type = static  # type: ignore[attr-defined]
            memo[id(t)] = found
        return found

    def walk(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return copy_tensor(value)
        if children(value) is not None:
            return tree_map_with(walk, value)
        if state_fields(value) is None:
            return value
        done = memo.get(id(value))
        if done is not None:
            return done
        for t in all_tensors(value):
            copy_tensor(t)  # deepcopy then finds every tensor copied already (detached, aliasing kept)
        try:
            done = memo[id(value)] = copy.deepcopy(value, memo)
        except Exception as e:  # locks, generators, handles: the call cannot be run on a copy
            raise Uncopyable(f"{type(value).__qualname__} cannot be copied ({type(e).__name__}: {e})") from None
        return done

    return walk(obj)


def refill(dst: Any, src: Any) -> bool:
    """Put `src`'s values back into `dst`, a clone of it that a call has since changed, in place: the same tensors
    (so the same memory) with `src`'s contents. False, leaving `dst` unusable, when the call changed its
    structure (a tensor replaced by one of another size, a list grown, a plain value changed): clone afresh then."""
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    seen: set[int] = set()

    def match(d: Any, s: Any) -> bool:
        if isinstance(s, torch.Tensor):
            if not isinstance(d, torch.Tensor) or d.shape != s.shape or d.dtype != s.dtype or d.device != s.device:
                return False
            pairs.append((d, s))
            return True
        if type(d) is not type(s):
            return False
        kids_s, kids_d = parts(s), parts(d)
        if kids_s is None or kids_d is None:
            try:
                return kids_s is None and kids_d is None and bool(d == s)
            except Exception:  # values without a plain equality: cannot tell them equal
                return False
        if id(s) in seen:
            return True
        seen.add(id(s))
        if len(kids_s) != len(kids_d):
            return False
        return all(ks == kd and match(vd, vs) for (ks, vs), (kd, vd) in zip(kids_s, kids_d))

    if not match(dst, src):
        return False
    with torch.no_grad():
        for d, s in pairs:
            d.copy_(s)
    return True


def tree_map_with(fn: Callable[[Any], Any], obj: Any) -> Any:
    """Rebuild a container with `fn` applied to each child (one level; `fn` recurses as it likes)."""
    if isinstance(obj, dict):
        mapped = {k: fn(v) for k, v in obj.items()}
        if type(obj) is dict:
            return mapped
        if dataclasses.is_dataclass(obj):
            try:
                return type(obj)(**mapped)
            except Exception:  # a class that cannot be rebuilt from its fields: the plain dict keeps the data
                return mapped
        try:
            return type(obj)(mapped)
        except Exception:  # a mapping class that cannot be rebuilt from a dict: the plain dict keeps the data
            return mapped
    if _is_namedtuple(obj):
        return type(obj)(*(fn(v) for v in obj))
    if isinstance(obj, tuple):
        return tuple(fn(v) for v in obj)
    if isinstance(obj, list):
        return [fn(v) for v in obj]
    names = _dataclass_fields(obj)
    if names is not None:
        new = copy.copy(obj)
        for n in names:
            object.__setattr__(new, n, fn(getattr(obj, n)))
        return new
    return obj
