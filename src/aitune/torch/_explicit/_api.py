"""`ait.tune`: record the `ait.Module` wrappers of a model or pipeline on a dataset, then tune them.

Each recorded input signature of each wrapper is tuned through the step JIT mode uses (the shared signature
runtime's `_signature._decide.decide`), with the wrapper's strategy for that signature; winners are installed,
the rest stay eager.

Wrappers are found from the object given: the object itself, the submodules of an nn.Module (through each
module's `_modules`, where a wrapper assigned into a parent sits), and for any other object (a pipeline) its
attributes, and the items of list, tuple and dict attributes, one level deep. With `func=` alone, or when a
pipeline object holds no reachable wrapper, every live wrapper records while the dataset runs and those that
were called are tuned.

The persistent cache (`AITUNE_JIT_CACHE_DIR`, or `aitune.torch.jit.config.config.cache_dir`) is used as in JIT
mode: a second `ait.tune` of the same module in a later process reuses its decision.

Known limits: a signature already tuned keeps its engine;
calls with shapes outside its range do not widen it (wrap again, or `enable_passthrough(force=True)` then tune).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch

from aitune.torch import cache
from aitune.torch._errors import UsageError
from aitune.torch._explicit._dataset import run_dataset
from aitune.torch._explicit._module import find_wrappers
from aitune.torch._explicit._runtime import LIVE, ModuleRuntime, RuntimeState
from aitune.torch._samples import SignatureRecord
from aitune.torch._settings._sources import ensure_settings_loaded
from aitune.torch._signature._background import WORKER
from aitune.torch._signature._decide import Plan, candidates, decide
from aitune.torch._signature._record import release_samples
from aitune.torch.jit.config import SETTINGS, config
from aitune.torch.tune_strategy import HighestThroughputStrategy, TuneStrategy

logger = logging.getLogger(__name__)

_WRAP_HINT = ("wrap the modules to tune first: `model = ait.Module(model)`, `parent.block = ait.Module(parent.block, "
              "'block')`, or `ait.wrap(pipeline, ait.inspect(pipeline, dataset).get_modules())`")


def tune(model_or_pipeline: Any = None, dataset: Iterable[Any] | None = None, *,
         func: Callable[..., Any] | None = None, strategy: TuneStrategy | None = None,
         background: bool | None = None) -> Any:
    """Run `dataset` through `func` (default: `model_or_pipeline` itself) and tune every `ait.Module` it reaches.

    Each dataset item is passed as `f(**item)` for a mapping, `f(*item)` for a tuple or list, else `f(item)`;
    the run is under `torch.no_grad()`. `strategy` is used for wrappers created without one of their own.
    Returns `model_or_pipeline`, or `func` when no model was given.

    `background=True` (default: the `background` setting, `AITUNE_JIT_BACKGROUND`): the dataset is recorded
    here, then the tuning runs in aitune's worker thread (`_signature._background`) and `tune` returns at once;
    the wrappers' calls run eagerly until their signatures are decided, then switch to the engines (state
    "tuning" meanwhile). `ait.wait()` waits for it. In strict mode a failure there is logged by the worker and
    the signature stays eager (nothing can raise into the caller, who has moved on).

    Raises UsageError when nothing can be tuned (no wrapper, empty dataset); a backend that fails never makes
    `tune` fail (its module stays eager) unless `aitune.torch.config.config.strict` is set.
    """
    ensure_settings_loaded()
    if model_or_pipeline is None and func is None:
        raise UsageError("ait.tune needs a model or pipeline, or func=: ait.tune(model, dataset)")
    if dataset is None:
        raise UsageError("ait.tune needs a dataset: an iterable of inputs, e.g. [x1, x2] or [{'input_ids': ids}]")
    if strategy is not None and not isinstance(strategy, TuneStrategy) and not hasattr(strategy, "tune"):
        raise UsageError(f"strategy must be a tune strategy such as ait.HighestThroughputStrategy(), got "
                         f"{type(strategy).__name__}", obj=strategy)
    f = func if func is not None else model_or_pipeline
    if not callable(f):
        raise UsageError(f"{type(f).__name__} is not callable: pass func= to say how to run it on a dataset item",
                         obj=f)
    found = find_wrappers(model_or_pipeline) if model_or_pipeline is not None else []
    if not found and isinstance(model_or_pipeline, torch.nn.Module):
        raise UsageError(f"{type(model_or_pipeline).__name__} holds no ait.Module: {_WRAP_HINT}",
                         obj=model_or_pipeline)
    # Without wrappers reachable from the object, record every live one and tune those the run called.
    scoped = not found
    runtimes = found or LIVE.alive()
    if not runtimes:
        raise UsageError(f"there is no ait.Module to tune: {_WRAP_HINT}", obj=model_or_pipeline or func)
    before = {id(rt): (rt.state, rt.calls) for rt in runtimes}
    for rt in runtimes:
        rt.enable_recording()
    try:
        count = run_dataset(f, dataset)
    except BaseException:
        for rt in runtimes:
            _restore(rt, before[id(rt)][0])
        raise
    if count == 0:
        for rt in runtimes:
            _restore(rt, before[id(rt)][0])
        raise UsageError("ait.tune got an empty dataset: pass at least one input (a few representative ones, "
                         "covering the shapes to serve)", obj=dataset)
    if scoped:
        called = [rt for rt in runtimes if rt.calls > before[id(rt)][1]]
        for rt in runtimes:
            if rt not in called:
                _restore(rt, before[id(rt)][0])
        if not called:
            raise UsageError(f"no ait.Module was called while the dataset ran: {_WRAP_HINT}", obj=f)
        runtimes = called
    logger.info("ait.tune: %d input(s) recorded for %s", count, ", ".join(rt.name for rt in runtimes))
    if background if background is not None else SETTINGS.background:
        for rt in runtimes:
            queue_runtime(rt, strategy)
        return model_or_pipeline if model_or_pipeline is not None else func
    done = 0
    try:
        for rt in runtimes:
            tune_runtime(rt, strategy)
            done += 1
    finally:
        for rt in runtimes[done + 1:]:  # strict mode raised: the others go back as they were, samples released
            _restore(rt, before[id(rt)][0])
    return model_or_pipeline if model_or_pipeline is not None else func


def _restore(rt: ModuleRuntime, state: RuntimeState) -> None:
    """Undo `enable_recording` for a wrapper that will not be tuned now."""
    with rt.lock:
        for sig in rt.signatures.values():
            if sig.status == "recording":
                release_samples(sig)
        rt.state = state


# -- tuning -------------------------------------------------------------------------------------------------------

def tune_runtime(rt: ModuleRuntime, default: TuneStrategy | None = None) -> None:
    """Tune every recorded signature of `rt`, then settle its state ("tuned" or "passthrough")."""
    index = {key: i for i, key in enumerate(rt.signatures)}
    pending = list(rt.recorded())
    if not pending:
        if any(s.status == "tuned" for s in rt.signatures.values()):
            logger.info("%s: no new input signature to tune", rt.name)
        else:
            why = " (it is in training mode: call .eval())" if rt.module.training else ""
            logger.info("%s: no call was recorded%s; it stays eager", rt.name, why)
    try:
        for sig in pending:
            i = index.get(sig.key, 0)
            chosen = rt.strategy_for(i) or default
            label = rt.name if len(rt.signatures) == 1 else f"{rt.name} (signature #{i + 1})"
            tune_signature(rt, sig, chosen, label)
    finally:
        rt.settle()


def queue_runtime(rt: ModuleRuntime, default: TuneStrategy | None = None) -> None:
    """`tune_runtime` in the background: every recorded signature of `rt` is queued for the worker, and `rt`
    settles when the last of them is decided; meanwhile it is in state "tuning"."""
    index = {key: i for i, key in enumerate(rt.signatures)}
    pending = list(rt.recorded())
    if not pending:
        tune_runtime(rt, default)  # nothing to queue: says so, and settles
        return
    with rt.lock:
        rt.state = "tuning"
    for sig in pending:
        i = index.get(sig.key, 0)
        chosen = rt.strategy_for(i) or default
        label = rt.name if len(rt.signatures) == 1 else f"{rt.name} (signature #{i + 1})"

        def run(runtime: ModuleRuntime, signature: SignatureRecord, chosen: TuneStrategy | None = chosen,
                label: str = label) -> None:
            try:
                tune_signature(runtime, signature, chosen, label)
            finally:
                if not any(s.status in ("queued", "tuning") for s in runtime.signatures.values()):
                    runtime.settle()

        if not WORKER.submit(rt, sig, run):  # the worker is stopping (interpreter exit): tune it here
            run(rt, sig)


def tune_signature(rt: ModuleRuntime, sig: SignatureRecord, strategy: TuneStrategy | None, label: str) -> None:
    """Decide for one signature through the shared step; the winner is installed, or it stays eager. Raises only
    in strict mode."""
    chosen = strategy if strategy is not None else HighestThroughputStrategy()

    def plan(device: torch.device) -> Plan:
        return Plan(chosen, list(chosen.backends) if chosen.backends is not None else candidates(device,
                                                                                                 config.backends))

    decision = decide(rt.module, sig, plan, name=rt.name, label=label, store=cache.configured_store(config),
                      progress=SETTINGS.progress, strict=SETTINGS.strict)
    if decision is None:
        return
    if decision.winner is not None:
        rt.installed()
    decision.raise_if_strict()
