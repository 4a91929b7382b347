"""Weight writes that version counters do not see: `p.data.copy_(q)`, `p.data = q`.

An engine holding its own copy of the weights (`Engine.bakes_weights`: ONNX Runtime, TensorRT, AOTInductor) is
dropped when the module's weights change. In-place writes bump a tensor's version counter, which is cheap to
compare on every call (`_fingerprint.weights_state`), but a write through `Parameter.data` goes to a tensor
with a counter of its own. So once such an engine is installed, `watch()` wraps `nn.Parameter.data` (its
getter and setter) to count accesses (`DATA_ACCESSES`); a tuned call compares that count, one integer, and only
when it moved samples the weights (`sample`: a few elements of every parameter and buffer, as bytes) and
compares them with the sample taken when the engine was built. The cost therefore falls on the calls that
follow a `.data` access, not on every call (`benchmarks/weights_check.py` measures both).

Known limits: a write that neither bumps a version counter nor goes through `Parameter.data` (a buffer's
`.data`, a NumPy or DLPack view) is not noticed; nor is one that leaves every sampled element as it was (a
write to a few elements only).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch

from aitune.torch._fingerprint import live_weights

#: Elements sampled from each weight tensor (evenly spaced, first and last included).
PER_TENSOR = 16


class _Accesses:
    """How often `Parameter.data` was read or assigned since `watch()` (plain attribute, read on tuned calls)."""

    value = 0


DATA_ACCESSES = _Accesses()
_lock = threading.Lock()
_saved: list[Any] = []


def watch() -> None:
    """Count `Parameter.data` accesses from now on (idempotent)."""
    with _lock:
        if _saved:
            return
        base: Any = torch._C.TensorBase.data
        original = torch.nn.Parameter.__dict__.get("data")
        _saved.append(original)

        def get(self: torch.Tensor) -> torch.Tensor:
            DATA_ACCESSES.value += 1
            got: torch.Tensor = base.__get__(self, type(self))
            return got

        def set_(self: torch.Tensor, value: torch.Tensor) -> None:
            DATA_ACCESSES.value += 1
            base.__set__(self, value)

        torch.nn.Parameter.data = property(get, set_, doc=base.__doc__)  # type: ignore[assignment]


def unwatch() -> None:
    """Restore `Parameter.data` (tests)."""
    with _lock:
        if not _saved:
            return
        original = _saved.pop()
        if original is None:
            del torch.nn.Parameter.data
        else:
            torch.nn.Parameter.data = original


def sample(module: torch.nn.Module) -> list[torch.Tensor]:
    """A few elements of every parameter and buffer of `module`, as bytes on the CPU (one copy per device)."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    with torch.no_grad():
        for t in live_weights(module):
            if t.device.type == "meta" or t.numel() == 0:
                continue
            flat = t.detach().reshape(-1)
            n = flat.numel()
            if n > PER_TENSOR:
                index = torch.arange(PER_TENSOR, device=flat.device) * (n - 1) // (PER_TENSOR - 1)
                flat = flat[index]
            by_device.setdefault(flat.device, []).append(flat.contiguous().view(torch.uint8).reshape(-1))
    return [torch.cat(parts).cpu() for _, parts in sorted(by_device.items(), key=lambda kv: str(kv[0]))]


def same(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


class Baseline:
    """The sampled weights an engine was built from, and the access count when they were taken."""

    __slots__ = ("accesses", "values")

    def __init__(self, module: torch.nn.Module) -> None:
        watch()
        self.accesses = DATA_ACCESSES.value
        self.values = sample(module)

    def changed(self, module: torch.nn.Module) -> bool:
        """True when a `Parameter.data` access since the last look changed a sampled element (cheap otherwise)."""
        if self.accesses == DATA_ACCESSES.value:
            return False
        self.accesses = DATA_ACCESSES.value
        now = sample(module)
        if same(now, self.values):
            return False
        self.values = now
        return True
