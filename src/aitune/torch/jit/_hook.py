"""Installing and removing the patch of `torch.nn.Module.__call__`.

The replacement's first statement hands off to the original while Dynamo traces (so compiled graphs never see
aitune), then one dict lookup decides: a module that is untracked, pending, detached, eager or skipped runs the
module's own `_call_impl` directly (what the original `__call__` does when the module was not compiled with
`Module.compile()`); anything else takes the slow path that `install(handler)` was given (`_runtime`'s).

Also patched, reversibly: `Module.load_state_dict` and `Module._apply` (weights reloaded, moved or cast) and
the module registration hooks (parameters or submodules replaced), which bump an epoch so tuned modules
re-check their weights on their next call; and an optimizer step hook for the same reason.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch.compiler import is_dynamo_compiling

from aitune.torch.jit import _tracker

logger = logging.getLogger(__name__)

Handler = Callable[[torch.nn.Module, Any, tuple[Any, ...], dict[str, Any]], Any]

_lock = threading.Lock()
_saved: dict[str, Any] = {}
_handles: list[Any] = []
_states_get = _tracker.STATES.get
_EPOCH = _tracker.EPOCH


def _not_installed(module: torch.nn.Module, st: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return torch.nn.Module._wrapped_call_impl(module, *args, **kwargs)


#: The slow path, set by `install` (a module global: the hot path reads it with one lookup).
_handle_call: Handler = _not_installed


def _aitune_call(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    if is_dynamo_compiling():
        return torch.nn.Module._wrapped_call_impl(self, *args, **kwargs)
    st = _states_get(id(self))
    if st is not None and st.passthrough:
        if self._compiled_call_impl is None:
            return self._call_impl(*args, **kwargs)
        return self._compiled_call_impl(*args, **kwargs)
    return _handle_call(self, st, args, kwargs)


def _bump(*_: Any, **__: Any) -> None:
    _EPOCH.value += 1


def _bump_registered(module: torch.nn.Module, *_: Any) -> None:
    """A parameter, buffer or submodule was registered on `module`: only one aitune tracks can hold stale weights
    (models build throwaway containers in their forward, e.g. `self.layers[:n]` makes a new ModuleList). Never
    inside a compiled region, where reading the epoch would become a guard that fails on every call."""
    if is_dynamo_compiling():
        return
    if _states_get(id(module)) is not None:
        _EPOCH.value += 1


def _bumping(original: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, *args, **kwargs)
        finally:
            _EPOCH.value += 1

    wrapper.__name__ = original.__name__
    wrapper.__qualname__ = original.__qualname__
    wrapper.__doc__ = original.__doc__
    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    return wrapper


_PATCHED_METHODS = ("load_state_dict", "_apply")


def is_installed() -> bool:
    return "__call__" in _saved


def install(handler: Handler) -> bool:
    """Patch torch, with `handler` as the slow path. Idempotent; returns False when it was already installed."""
    global _handle_call
    with _lock:
        if is_installed():
            return False
        _handle_call = handler
        Module = torch.nn.Module
        _saved["__call__"] = Module.__dict__["__call__"]
        for name in _PATCHED_METHODS:
            original = Module.__dict__[name]
            _saved[name] = original
            setattr(Module, name, _bumping(original))
        from torch.nn.modules import module as module_mod

        _handles.append(module_mod.register_module_parameter_registration_hook(_bump_registered))
        _handles.append(module_mod.register_module_buffer_registration_hook(_bump_registered))
        _handles.append(module_mod.register_module_module_registration_hook(_bump_registered))
        from torch.optim.optimizer import register_optimizer_step_post_hook

        _handles.append(register_optimizer_step_post_hook(_bump))
        Module.__call__ = _aitune_call  # type: ignore[method-assign]
        logger.debug("patched torch.nn.Module.__call__")
        return True


def restore_in_forked_child() -> bool:
    """`uninstall` for the child of an `os.fork`: its lock made anew first (a thread of the parent that held it
    does not exist here). True when the patch was installed."""
    global _lock
    _lock = threading.Lock()
    return uninstall()


def uninstall() -> bool:
    """Restore the exact original attributes. Idempotent; returns False when nothing was installed."""
    global _handle_call
    with _lock:
        if not is_installed():
            return False
        Module = torch.nn.Module
        Module.__call__ = _saved.pop("__call__")  # type: ignore[method-assign]
        _handle_call = _not_installed
        for name in _PATCHED_METHODS:
            setattr(Module, name, _saved.pop(name))
        while _handles:
            _handles.pop().remove()
        logger.debug("restored torch.nn.Module.__call__")
        return True
