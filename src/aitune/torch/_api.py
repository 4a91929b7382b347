"""`ait.tune`: record the `ait.Module` wrappers of a model or pipeline on a dataset, then tune them.

Each recorded input signature of each wrapper is tuned through the step JIT mode uses (`_tuning.make_job`,
`_tuning.run`), with the wrapper's strategy for that signature; winners are installed, the rest stay eager.

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
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from aitune.torch import _tuning, cache
from aitune.torch._errors import AITuneError, TuningError, UsageError
from aitune.torch._explicit import ModuleRuntime, Quiet, live_runtimes, release_samples
from aitune.torch._module import runtime_of
from aitune.torch._samples import SignatureRecord, first_device
from aitune.torch._settings_sources import ensure_settings_loaded
from aitune.torch.backend import Backend
from aitune.torch.tune_strategy import HighestThroughputStrategy, TuneOutcome, TuneStrategy

logger = logging.getLogger(__name__)

_WRAP_HINT = ("wrap the modules to tune first: `model = ait.Module(model)`, `parent.block = ait.Module(parent.block, "
              "'block')`, or `ait.wrap(pipeline, ait.inspect(pipeline, dataset).get_modules())`")


def tune(model_or_pipeline: Any = None, dataset: Iterable[Any] | None = None, *,
         func: Callable[..., Any] | None = None, strategy: TuneStrategy | None = None) -> Any:
    """Run `dataset` through `func` (default: `model_or_pipeline` itself) and tune every `ait.Module` it reaches.

    Each dataset item is passed as `f(**item)` for a mapping, `f(*item)` for a tuple or list, else `f(item)`;
    the run is under `torch.no_grad()`. `strategy` is used for wrappers created without one of their own.
    Returns `model_or_pipeline`, or `func` when no model was given.

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
    runtimes = found or live_runtimes()
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
    done = 0
    try:
        for rt in runtimes:
            tune_runtime(rt, strategy)
            done += 1
    finally:
        for rt in runtimes[done + 1:]:  # strict mode raised: the others go back as they were, samples released
            _restore(rt, before[id(rt)][0])
    return model_or_pipeline if model_or_pipeline is not None else func


def run_dataset(f: Callable[..., Any], dataset: Iterable[Any]) -> int:
    """Call `f` on every item (mapping: keywords; tuple or list: positional; else one argument), no grad."""
    count = 0
    with torch.no_grad():
        for item in dataset:
            if isinstance(item, Mapping):
                f(**item)
            elif isinstance(item, (tuple, list)):
                f(*item)
            else:
                f(item)
            count += 1
    return count


def _restore(rt: ModuleRuntime, state: str) -> None:
    """Undo `enable_recording` for a wrapper that will not be tuned now."""
    with rt.lock:
        for sig in rt.signatures.values():
            if sig.status == "recording":
                release_samples(sig)
        rt.state = state


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


def candidates(device: torch.device) -> list[Backend]:
    """JIT mode's candidates: `aitune.torch.jit.config.config.backends` if set, else the defaults for `device`."""
    from aitune.torch.backend._defaults import default_backends
    from aitune.torch.jit.config import config

    configured = config.backends
    return list(configured) if configured else default_backends(device)


def tune_signature(rt: ModuleRuntime, sig: SignatureRecord, strategy: TuneStrategy | None, label: str) -> None:
    """Decide for one signature; install the winner or leave it eager. Raises only in strict mode."""
    from aitune.torch.config import config as global_config
    from aitune.torch.jit._settings import SETTINGS

    with rt.lock:
        if sig.status != "recording" or not sig.samples:
            return
        sig.status = "tuning"
    samples = list(sig.samples)
    outcome: TuneOutcome | None = None
    error: BaseException | None = None
    reference = None
    try:
        device = first_device(samples)
        chosen = strategy if strategy is not None else HighestThroughputStrategy()
        backends = chosen.backends if chosen.backends is not None else candidates(device)
        logger.info("%s: tuning on %s with %d sample(s); %s over %s", label, device, len(samples), chosen.describe(),
                    ", ".join(b.describe() for b in backends) or "no backend")
        job = _tuning.make_job(rt.module, rt.name, sig, samples, device, backends, progress=SETTINGS.progress)
        with Quiet():
            outcome = _tuning.run(job, chosen, cache.configured_store())
            reference = job.timing_sample() if outcome.winner is not None else None
    except Exception as e:
        error = e
    if outcome is not None:
        sig.candidates = [c.to_report() for c in outcome.candidates]
        sig.cache = outcome.cache
    winner = outcome.winner if outcome is not None and error is None else None
    if winner is not None and winner.engine is not None and outcome is not None:
        sig.freeze_engine_range(samples)
        sig.reference = reference
        rt.install(sig, winner, outcome.eager_latency_ms)
        release_samples(sig)
        eager, tuned = outcome.eager_latency_ms, winner.latency_ms
        speed = f", {eager / tuned:.2f}x faster ({eager:.3f} ms -> {tuned:.3f} ms)" if eager and tuned else ""
        logger.info("%s: tuned with %s%s", label, winner.backend, speed)
        return
    reason = (f"{type(error).__name__}: {error}" if error is not None
              else (outcome.reason if outcome is not None and outcome.reason else "not tuned"))
    with rt.lock:
        sig.status = "eager"
        sig.reason = reason[:500]
        sig.eager_latency_ms = outcome.eager_latency_ms if outcome is not None else None
    release_samples(sig)
    logger.info("%s: stays eager (%s)", label, reason[:300])
    if error is not None and global_config.strict:
        if isinstance(error, AITuneError):
            raise error
        raise TuningError(f"tuning {label} failed: {error}", module_name=rt.name) from error
