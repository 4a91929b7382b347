"""`ait.Module`: a transparent wrapper that marks a module for explicit tuning with `ait.tune`, and finding the
wrappers of a model or pipeline (`find_wrappers`).

The wrapper is a `wrapt.ObjectProxy`: attributes, `state_dict`, `parameters()`, hooks and `isinstance` checks
all reach the wrapped module, and it can be assigned as a submodule (`parent.block = ait.Module(parent.block)`)
without changing the parent's `state_dict()` keys. Its calls go through its `ModuleRuntime` (`runtime_of`).

Known limits: a parent's `named_modules()`/`modules()` yield the wrapped module, not the wrapper (torch walks
each child's own `_modules`); `ait.tune` finds wrappers through the parents' `_modules` instead. Pickling or
deep-copying a wrapper copies the wrapped module into a fresh, untuned wrapper (engines are not copied).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from aitune.torch._explicit._runtime import ModuleRuntime
from aitune.torch.tune_strategy import TuneStrategy

if TYPE_CHECKING:
    # For type checkers the wrapper is what it passes for at run time (isinstance(wrapper, torch.nn.Module)).
    _Proxy = torch.nn.Module
else:
    from wrapt import ObjectProxy as _Proxy

__all__ = ["Module", "ModuleRuntime", "find_wrappers", "runtime_of"]

#: Methods of torch.nn.Module that return the module itself: on the wrapper they return the wrapper.
_SELF_RETURNING = ("to", "to_empty", "cuda", "cpu", "xpu", "ipu", "mtia", "half", "float", "double", "bfloat16",
                   "type", "eval", "train", "requires_grad_", "zero_grad", "apply", "share_memory")
#: Those that may move, cast or replace the weights (engines built from the old ones are then dropped).
_WEIGHT_CHANGING = frozenset({"to", "to_empty", "cuda", "cpu", "xpu", "ipu", "mtia", "half", "float", "double",
                              "bfloat16", "type", "apply"})


class Module(_Proxy):
    """Wrap `module` for `ait.tune`.

    Args:
        module: the torch.nn.Module to tune.
        name: how logs and reports name it (default: its class name).
        strategy: the tune strategy for every input signature (default: the one given to `ait.tune`, else
            `HighestThroughputStrategy` over JIT mode's candidates).
        strategies: per input signature, by index in the order of first call: a list, or a dict index -> strategy;
            overrides `strategy` for those signatures.

    Until `ait.tune` runs, calls run the module eagerly. Methods that return the module (`to`, `eval`, `half`...)
    return the wrapper.
    """

    _self_runtime: ModuleRuntime
    __wrapped__: torch.nn.Module

    def __init__(self, module: torch.nn.Module, name: str | None = None, strategy: TuneStrategy | None = None,
                 strategies: Sequence[TuneStrategy | None] | Mapping[int, TuneStrategy | None] | None = None
                 ) -> None:
        if isinstance(module, Module):
            raise TypeError(f"{module._self_runtime.name} is already an ait.Module; wrap the module only once")
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"ait.Module wraps a torch.nn.Module, got {type(module).__name__}")
        super().__init__(module)
        self._self_runtime = ModuleRuntime(module, name or type(module).__name__, strategy, strategies)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        rt = self._self_runtime
        if rt.state == "passthrough":
            return rt.eager(args, kwargs)
        return rt(args, kwargs)

    # -- state of the explicit API ----------------------------------------------------------------------------

    @property
    def aitune_runtime(self) -> ModuleRuntime:
        """The wrapper's runtime: signatures, samples, engines; `.describe()` tells its state and decisions.

        (Only `aitune_runtime`, `enable_recording` and `enable_passthrough` are added to the wrapper, so that the
        wrapped module's own attributes stay reachable.)
        """
        return self._self_runtime

    def enable_recording(self) -> None:
        """Record the next calls for `ait.tune` (see `ModuleRuntime.enable_recording`)."""
        self._self_runtime.enable_recording()

    def enable_passthrough(self, force: bool = False) -> None:
        """Run every call eagerly; from the tuned state only with `force=True` (drops the engines)."""
        self._self_runtime.enable_passthrough(force)

    # -- methods that return the module, or move it ----------------------------------------------------------

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Module:
        # A parent's .to()/.half() reaches its children through _apply.
        self.__wrapped__._apply(fn, *args, **kwargs)
        self._self_runtime.check_weights("moved or cast")
        return self

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        result = self.__wrapped__.load_state_dict(*args, **kwargs)
        self._self_runtime.check_weights("weights reloaded")
        return result

    def __repr__(self) -> str:
        rt = self._self_runtime
        return f"ait.Module(name={rt.name!r}, state={rt.state!r}): {self.__wrapped__!r}"

    # -- copies: a fresh wrapper around a copy; engines and samples stay with the original ------------------

    def __copy__(self) -> Module:
        return self._rewrap(copy.copy(self.__wrapped__))

    def __deepcopy__(self, memo: dict[int, Any]) -> Module:
        return self._rewrap(copy.deepcopy(self.__wrapped__, memo))

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        rt = self._self_runtime
        return (_rebuild, (self.__wrapped__, rt.name, rt.strategy, rt.strategies or None))

    def _rewrap(self, module: torch.nn.Module) -> Module:
        rt = self._self_runtime
        return Module(module, rt.name, rt.strategy, dict(rt.strategies) or None)


def _rebuild(module: torch.nn.Module, name: str, strategy: TuneStrategy | None,
             strategies: Mapping[int, TuneStrategy | None] | None) -> Module:
    return Module(module, name, strategy, strategies)


def _self_returning(name: str) -> Any:
    original = getattr(torch.nn.Module, name, None)
    changes_weights = name in _WEIGHT_CHANGING

    def method(self: Module, *args: Any, **kwargs: Any) -> Any:
        inner = self.__wrapped__
        result = getattr(inner, name)(*args, **kwargs)
        if changes_weights:
            self._self_runtime.check_weights("moved or cast")
        return self if result is inner else result

    method.__name__ = name
    method.__qualname__ = f"Module.{name}"
    method.__doc__ = getattr(original, "__doc__", None)
    return method


for _name in _SELF_RETURNING:
    if hasattr(torch.nn.Module, _name):
        setattr(Module, _name, _self_returning(_name))
del _name


def runtime_of(obj: Any) -> ModuleRuntime | None:
    """The runtime of an `ait.Module` wrapper; None for anything else (the wrapped module itself included)."""
    if isinstance(obj, Module):
        runtime: ModuleRuntime = obj._self_runtime
        return runtime
    return None


# -- finding wrappers ---------------------------------------------------------------------------------------------

def find_wrappers(obj: Any) -> list[ModuleRuntime]:
    """The runtimes of the wrappers reachable from `obj` (see the module docstring), outermost first."""
    found: dict[int, ModuleRuntime] = {}
    seen: set[int] = set()
    if isinstance(obj, torch.nn.Module):
        _walk(obj, found, seen)
        return list(found.values())
    for value in _attributes(obj):
        if isinstance(value, torch.nn.Module):
            _walk(value, found, seen)
        elif isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, torch.nn.Module):
                    _walk(item, found, seen)
        elif isinstance(value, dict):
            for item in value.values():
                if isinstance(item, torch.nn.Module):
                    _walk(item, found, seen)
    return list(found.values())


def _attributes(obj: Any) -> list[Any]:
    try:
        return list(vars(obj).values())
    except TypeError:
        return []


def _walk(module: torch.nn.Module, found: dict[int, ModuleRuntime], seen: set[int]) -> None:
    # A parent's `_modules` holds the wrapper itself; named_modules() would yield the wrapped module instead.
    stack = [module]
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        rt = runtime_of(m)
        if rt is not None:
            found.setdefault(id(rt), rt)
        stack.extend(child for child in reversed(list(m._modules.values())) if child is not None)
