"""User hooks on modules that aitune records or serves with an engine: run once per user call, never by aitune.

A module's own forward pre-hooks and forward hooks are run by aitune around what replaces its forward (the
recorded eager call, or the engine), with `call_with_hooks`, exactly as `torch.nn.Module._call_impl` runs them:
pre-hooks may replace the inputs (and the call is keyed and recorded on what they return), forward hooks may
replace the output, `always_call` hooks also run when the call fails. So hooks fire once per user call, hooks
registered after tuning fire too, and aitune's own runs (building, checking, timing) call `forward` alone.

What an engine cannot honour keeps the call eager (`blocked_by`): backward hooks on the module, global module
hooks (`register_module_forward_hook` and the like, which would have to fire for every submodule an engine fuses
away), and hooks on any submodule (the same). Registering a hook on any module bumps `HOOKS` (while `watch()`
is active), so a tuned module notices new hooks below it on its next call.

One kind of submodule hook does not keep JIT mode from fusing (`inert_hook`): transformers' output-capturing
hooks, which it installs for good on every layer the first time a model is asked for `output_hidden_states` or
`output_attentions`, and which do nothing unless an enclosing model's call is collecting those outputs
(`library_collecting`). A module with such hooks below is tuned as a whole; while a collection is under way its
calls run eagerly, so the hooks fire and aitune neither records, tunes nor serves an engine then. A model that
collects in its own forward (the one asked for hidden states) is compared with eager on its outputs, which hold
what the hooks collected.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.nn.modules import module as _torch_module

_REGISTRATIONS = ("register_forward_hook", "register_forward_pre_hook", "register_full_backward_hook",
                  "register_full_backward_pre_hook", "register_backward_hook")


class HookEpoch:
    """Bumped whenever a hook is registered on any module (see `watch`)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


HOOKS = HookEpoch()


class _Watch:
    """The patch of nn.Module's hook registration methods: reversible, idempotent, counted per user."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._kept = False
        self._saved: dict[str, Any] = {}

    def start(self) -> None:
        with self._lock:
            self._users += 1
            if self._saved:
                return
            for name in _REGISTRATIONS:
                original = torch.nn.Module.__dict__[name]
                self._saved[name] = original
                setattr(torch.nn.Module, name, _bumping(original))

    def keep(self) -> None:
        """Start once for the rest of the process (the explicit API, whose engines outlive any enable/disable)."""
        with self._lock:
            kept = self._kept
            self._kept = True
        if not kept:
            self.start()

    def stop(self) -> None:
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users or not self._saved:
                return
            for name, original in self._saved.items():
                setattr(torch.nn.Module, name, original)
            self._saved.clear()


_WATCH = _Watch()


def watch() -> None:
    """Bump `HOOKS` on every hook registration from now on (until as many `unwatch()` calls)."""
    _WATCH.start()


def unwatch() -> None:
    _WATCH.stop()


def keep_watching() -> None:
    """`watch()` once, for good (idempotent)."""
    _WATCH.keep()


def _bumping(original: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, *args, **kwargs)
        finally:
            if not torch.compiler.is_compiling():  # inside a compiled region the read would become a guard
                HOOKS.value += 1

    wrapper.__name__ = original.__name__
    wrapper.__qualname__ = original.__qualname__
    wrapper.__doc__ = original.__doc__
    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    return wrapper


def global_hooks() -> bool:
    """Any global module hook (`torch.nn.modules.module.register_module_*_hook`)?"""
    m = _torch_module
    return bool(m._global_forward_hooks or m._global_forward_pre_hooks or m._global_backward_hooks
                or m._global_backward_pre_hooks)


def own_forward_hooks(module: torch.nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def blocked_by(module: torch.nn.Module) -> str | None:
    """Why calls of `module` cannot be recorded or served by an engine because of hooks, or None."""
    if global_hooks():
        return ("global module hooks are registered (register_module_forward_hook or the like): they would have "
                "to run for every submodule an engine fuses away")
    if module._backward_hooks or module._backward_pre_hooks:
        return "it has backward hooks, which need its eager autograd graph"
    return None


def hooked_submodule(module: torch.nn.Module, *, inert_too: bool = True) -> str | None:
    """The name of a submodule with hooks of any kind (an engine fusing it would skip them), or None; with
    `inert_too` False, forward hooks that do nothing unless a library turns them on (`inert_hook`) are not
    counted."""
    for name, sub in module.named_modules():
        if sub is module:
            continue
        if sub._forward_pre_hooks or sub._backward_hooks or sub._backward_pre_hooks:
            return name
        if sub._forward_hooks and (inert_too or not all(inert_hook(h) for h in sub._forward_hooks.values())):
            return name
    return None


def inert_library_hooks_below(module: torch.nn.Module) -> bool:
    """Has a submodule a forward hook that does nothing unless a library turns it on (`inert_hook`)?"""
    return any(sub is not module and any(inert_hook(h) for h in sub._forward_hooks.values())
               for sub in module.modules())


#: (module, function name) of hooks that do nothing unless their library collects through them for a call.
_INERT_HOOKS = frozenset({("transformers.utils.output_capturing", "output_capturing_hook")})


def inert_hook(hook: Any) -> bool:
    """A hook that acts only while its library collects through it (transformers' output capturing)?"""
    fn = getattr(hook, "__func__", hook)
    code = getattr(fn, "__code__", None)
    return code is not None and (getattr(fn, "__module__", None), code.co_name) in _INERT_HOOKS


def library_collecting() -> bool:
    """Is a library collecting through inert hooks in this context now (transformers: an enclosing model asked
    for hidden states or attentions)? True when that cannot be told."""
    capturing = sys.modules.get("transformers.utils.output_capturing")
    if capturing is None:
        return False
    try:
        return bool(capturing._active_collector.get())
    except Exception:
        return True


def call_with_hooks(module: torch.nn.Module, forward: Callable[[tuple[Any, ...], dict[str, Any]], Any],
                    args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """`forward(args, kwargs)` with the module's own forward pre-hooks and forward hooks around it, as
    `nn.Module._call_impl` runs them (the module has no backward hooks and there are no global hooks)."""
    result = None
    called: set[int] = set()
    try:
        for hook_id, hook in list(module._forward_pre_hooks.items()):
            if hook_id in module._forward_pre_hooks_with_kwargs:
                replaced = hook(module, args, kwargs)
                if replaced is not None:
                    if isinstance(replaced, tuple) and len(replaced) == 2:
                        args, kwargs = replaced
                    else:
                        raise RuntimeError("forward pre-hook must return None or a tuple of (new_args, new_kwargs), "
                                           f"but got {replaced}.")
            else:
                replaced = hook(module, args)
                if replaced is not None:
                    args = replaced if isinstance(replaced, tuple) else (replaced,)
        result = forward(args, kwargs)
        for hook_id, hook in list(module._forward_hooks.items()):
            if hook_id in module._forward_hooks_always_called:
                called.add(hook_id)
            if hook_id in module._forward_hooks_with_kwargs:
                replaced = hook(module, args, kwargs, result)
            else:
                replaced = hook(module, args, result)
            if replaced is not None:
                result = replaced
        return result
    except Exception:
        for hook_id, hook in list(module._forward_hooks.items()):
            if hook_id in module._forward_hooks_always_called and hook_id not in called:
                try:
                    if hook_id in module._forward_hooks_with_kwargs:
                        replaced = hook(module, args, kwargs, result)
                    else:
                        replaced = hook(module, args, result)
                    if replaced is not None:
                        result = replaced
                except Exception as e:  # as torch does: the forward's own error is the one raised
                    warnings.warn("module forward hook with ``always_call=True`` raised an exception that was "
                                  f"silenced as another error was raised in forward: {e}", stacklevel=2)
        raise
