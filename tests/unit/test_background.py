"""Background tuning's own parts: torch.fx patches kept to the thread that made them, and `wait()`."""

from __future__ import annotations

import threading

import torch
from torch.fx import _symbolic_trace as fx_trace

from aitune.torch.jit import _background


def test_fx_patches_apply_to_the_patching_thread_only() -> None:
    _background.guard_fx_patches()
    lin = torch.nn.Linear(2, 2)
    seen: dict[str, object] = {}
    patched = threading.Event()
    done = threading.Event()

    def tracer_thread() -> None:
        with fx_trace._Patcher() as patcher:
            patcher.patch_method(torch.nn.Module, "__call__", lambda mod, *a, **k: "traced")
            seen["own"] = lin(torch.ones(1, 2))
            patched.set()
            done.wait(10)

    t = threading.Thread(target=tracer_thread)
    t.start()
    assert patched.wait(10)
    other = lin(torch.ones(1, 2))  # this thread, while the other one's patch is in place
    done.set()
    t.join()
    assert seen["own"] == "traced"
    assert isinstance(other, torch.Tensor) and other.shape == (1, 2)


def test_wait_returns_at_once_when_nothing_is_queued() -> None:
    assert _background.wait(timeout=1.0)
