"""Recording calls of a signature: copies of the inputs and of the eager outputs, under ONE sample budget.

`BUDGET` caps the bytes of every sample held in the process, whichever front recorded it (`max_samples_bytes`);
`record_call` runs the call eagerly and keeps a `Sample` when the signature still wants one and the budget has
room; `release_samples` gives a signature's samples (and their bytes) back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from aitune.torch import _tree
from aitune.torch._checking import same_values
from aitune.torch._errors import AITuneError
from aitune.torch._samples import Sample, SignatureRecord
from aitune.torch._signature._state import changes, snapshot

logger = logging.getLogger(__name__)


class SampleBudget:
    """The bytes held by recorded samples in this process, against the `max_samples_bytes` cap."""

    def __init__(self) -> None:
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def take(self, size: int, cap: int) -> bool:
        """Count `size` more bytes if they fit under `cap`; False (nothing counted) when they do not."""
        with self._lock:
            if self._used + size > cap:
                return False
            self._used += size
            return True

    def give_back(self, size: int) -> None:
        with self._lock:
            self._used = max(0, self._used - size)

    def reset(self) -> None:
        with self._lock:
            self._used = 0


BUDGET = SampleBudget()


def reset() -> None:
    """Forget every byte counted (for tests; the samples themselves belong to their signatures)."""
    BUDGET.reset()


def release_samples(sig: SignatureRecord) -> None:
    """Drop the signature's samples and give their bytes back to the budget."""
    with sig.lock:
        size = sum(s.nbytes for s in sig.samples)
        sig.samples.clear()
        sig.compiled.clear()
    BUDGET.give_back(size)


def record_call(sig: SignatureRecord, args: tuple[Any, ...], kwargs: dict[str, Any], eager: Callable[[], Any], *,
                name: str, module: torch.nn.Module, max_samples: int, max_bytes: int,
                fail_open: Callable[[str, BaseException], None],
                shapes: tuple[tuple[int, ...], ...] | None = None) -> Any:
    """Run the call (`eager()`) and keep a sample of it when `sig` has fewer than `max_samples` and the budget
    has room: copies of its inputs (state objects such as a cache included, so that nothing aitune runs later
    reaches the caller's objects), of its outputs, and of its inputs after the call when it changed them. What the
    call changed in `module` itself is noted on the signature (`_signature._state`). Failures of the copying go to
    `fail_open` (which raises in strict mode); the call's result is returned either way. `shapes` are the call's
    tensor sizes in the signature's order (`SignatureTable.lookup`), kept with the sample for its engine range."""
    inputs = None
    before = None
    try:
        if len(sig.samples) < max_samples and BUDGET.used < max_bytes:
            inputs = _tree.clone((args, kwargs))
            before = snapshot(module)
    except _tree.Uncopyable as e:
        with sig.lock:
            sig.status = "eager"
            sig.reason = f"its inputs cannot be copied, so aitune cannot tune it without touching them: {e}"
        logger.info("%s: stays eager (%s)", name, sig.reason)
    except Exception as e:  # inputs that cannot be copied are not recorded; the call runs as it is
        fail_open(f"recording inputs of {name}", e)
    if inputs is None:
        return eager()
    cuda = any(t.is_cuda for t in _tree.all_tensors((args, kwargs)))
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = eager()
    if cuda:
        torch.cuda.synchronize()
    sig.recorded_ms.append((time.perf_counter() - start) * 1000.0)  # where the time goes (inspect mode, report)
    try:
        after_call = snapshot(module) if before is not None else None
        if before is not None and after_call is not None and sig.samples:  # the first call may set up lazily
            changed = changes(before, after_call)
            if changed is not None:
                sig.state_change = changed
            elif sig.recorded_state is not None and (between := changes(sig.recorded_state, before)) is not None:
                # The script changed the module between recorded calls (`m.temperature = 0.25`): the samples
                # so far show another computation; recording starts over from this call.
                logger.debug("%s: %s changed between recorded calls; recording afresh", name, between)
                release_samples(sig)
                sig.calls = 1
        sig.recorded_state = after_call
        if sig.aliases is None:
            sig.aliases = output_aliases(module, (args, kwargs), out)
        outputs = _tree.clone(out)
        mutated = not same_values(inputs, (args, kwargs))
        after = _tree.clone((args, kwargs)) if mutated else None
        size = _tree.nbytes((inputs, outputs, after))
        if not BUDGET.take(size, max_bytes):
            logger.info("%s: sample byte cap (%d bytes) reached; not storing more samples", name, max_bytes)
            return out
        with sig.lock:
            keep = sig.status == "recording" and len(sig.samples) < max_samples
            if keep:
                sig.samples.append(Sample(inputs[0], inputs[1], outputs, after, size, shapes))
        if not keep:
            BUDGET.give_back(size)
    except AITuneError:
        raise
    except Exception as e:  # outputs that cannot be copied are not recorded; the call's result is returned
        fail_open(f"recording {name}", e)
    return out


def output_aliases(module: torch.nn.Module, inputs: tuple[tuple[Any, ...], dict[str, Any]], out: Any) -> str | None:
    """What the first output tensor that shares memory with the module's parameters or buffers, or with an input,
    shares it with; None when no output does. A caller may edit such an output in place and expect the module's
    state (or its own tensor) to change with it."""
    owned: dict[int, str] = {}
    for kind, named in (("parameter", module.named_parameters()), ("buffer", module.named_buffers())):
        for pname, t in named:
            if t.device.type != "meta":
                owned.setdefault(t.untyped_storage().data_ptr(), f"the module's {kind} {pname}")
    args, kwargs = inputs
    for path, leaf in (*_tree.leaf_paths(args, "args"), *_tree.leaf_paths(kwargs)):
        if isinstance(leaf, torch.Tensor) and leaf.device.type != "meta":
            owned.setdefault(leaf.untyped_storage().data_ptr(), f"the input {path}")
    for path, leaf in _tree.leaf_paths(out, "output"):
        if isinstance(leaf, torch.Tensor) and leaf.device.type != "meta" and leaf.untyped_storage().nbytes():
            found = owned.get(leaf.untyped_storage().data_ptr())
            if found is not None:
                return f"{path} is {found}"
    return None
