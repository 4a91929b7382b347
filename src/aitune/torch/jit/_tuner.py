"""Tuning one module on one input signature, and the top-down walk that follows the decision.

Tuning runs in the thread whose call completed the recording. The signature is claimed under the lock
("tuning"), the work runs without it (other threads meanwhile run that module eagerly), and the result is
committed under the lock again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from aitune.torch import _tuning, cache
from aitune.torch._errors import AITuneError, TuningError
from aitune.torch._samples import SignatureRecord, first_device
from aitune.torch.backend import Backend
from aitune.torch.backend._defaults import default_backends
from aitune.torch.jit import _tracker
from aitune.torch.jit._runtime import Busy
from aitune.torch.jit._settings import SETTINGS
from aitune.torch.jit._tracker import LOCK, ModuleState, release_samples
from aitune.torch.tune_strategy import (
    FirstWinsStrategy,
    HighestThroughputStrategy,
    TuneOutcome,
    TuneStrategy,
)

logger = logging.getLogger(__name__)

#: Called after every decision (the report keeps itself current through this).
DECISION_LISTENERS: list[Any] = []


def _candidates(device: torch.device) -> list[Backend]:
    from aitune.torch.jit.config import config

    configured = config.backends
    return list(configured) if configured else default_backends(device)


def _strategy(backends: Sequence[Backend]) -> TuneStrategy:
    from aitune.torch.jit.config import config

    chosen = config.strategy
    if isinstance(chosen, TuneStrategy):
        return chosen
    if hasattr(chosen, "tune"):
        return chosen
    name = str(chosen)
    if name == "first_wins":
        return FirstWinsStrategy()
    if name == "one_backend":
        from aitune.torch.tune_strategy import OneBackendStrategy

        if len(backends) != 1:
            raise TuningError(f"strategy 'one_backend' needs exactly one backend in config.backends, got "
                              f"{len(backends)}: {', '.join(b.describe() for b in backends)}")
        return OneBackendStrategy(backends[0])
    return HighestThroughputStrategy()


def tune_signature(st: ModuleState, sig: SignatureRecord) -> None:
    """Tune `sig` of the module of `st` now, unless another thread already is."""
    with LOCK:
        if sig.status != "recording" or st.status != "active" or not sig.samples:
            return
        sig.status = "tuning"
    module = st.ref()
    if module is None:
        return
    start = time.perf_counter()
    outcome: TuneOutcome | None = None
    error: BaseException | None = None
    try:
        with Busy():
            outcome = _run_strategy(st, sig, module)
    except Exception as e:
        error = e
    with LOCK:
        st.tune_seconds += time.perf_counter() - start
        _commit(st, sig, outcome, error)
    for listener in DECISION_LISTENERS:
        try:
            listener()
        except Exception:
            logger.debug("decision listener failed", exc_info=True)
    if error is not None and SETTINGS.strict:
        if isinstance(error, AITuneError):
            raise error
        raise TuningError(f"tuning {st.name} failed: {error}", module_name=st.name) from error


def _run_strategy(st: ModuleState, sig: SignatureRecord, module: torch.nn.Module) -> TuneOutcome:
    samples = list(sig.samples)
    device = first_device(samples)
    backends = _candidates(device)
    strategy = _strategy(backends)
    if strategy.backends is not None:
        backends = strategy.backends
    if st.live_weights_only:
        backends = [b for b in backends if not b.bakes_weights]
        if not backends:
            return TuneOutcome(None, [], None, "its weights keep changing in place and every candidate backend holds "
                               "a copy of them (add one that reads live weights, e.g. TorchInductorJitBackend)")
    shapes = ", ".join(f"{d['name']}{tuple(lo)}..{tuple(hi)}" if lo != hi else f"{d['name']}{tuple(lo)}"
                       for d, lo, hi in zip(sig.description, sig.min_shapes, sig.max_shapes))
    logger.info("%s: tuning on %s with %d sample(s) [%s]; %s over %s", st.name, device, len(samples), shapes,
                strategy.describe(), ", ".join(b.describe() for b in backends))
    job = _tuning.make_job(module, st.name, sig, samples, device, backends, progress=SETTINGS.progress)
    return _tuning.run(job, strategy, cache.configured_store())


def _commit(st: ModuleState, sig: SignatureRecord, outcome: TuneOutcome | None, error: BaseException | None) -> None:
    if outcome is not None:
        sig.candidates = [c.to_report() for c in outcome.candidates]
        sig.eager_latency_ms = outcome.eager_latency_ms
        sig.cache = outcome.cache
    module = st.ref()
    if error is None and outcome is not None and outcome.winner is not None and st.status == "active":
        winner = outcome.winner
        sig.take_engine(winner)
        sig.freeze_engine_range(sig.samples)
        release_samples(sig)
        if module is not None:
            st.param_ids, st.version_sum = _tracker.fingerprint(module)
        eager, tuned = outcome.eager_latency_ms, winner.latency_ms
        speed = f", {eager / tuned:.2f}x faster ({eager:.3f} ms -> {tuned:.3f} ms)" if eager and tuned else ""
        cached = " (from the cache)" if outcome.cache == "hit" else ""
        logger.info("%s: tuned with %s%s%s", st.name, winner.backend, speed, cached)
        if not st.decided:
            st.decided = True
            _tracker.detach_descendants(st)
        return
    reason = (f"{type(error).__name__}: {error}" if error is not None
              else (outcome.reason if outcome is not None and outcome.reason else "not tuned"))
    sig.status = "eager"
    sig.reason = reason
    release_samples(sig)
    logger.info("%s: stays eager (%s)", st.name, reason)
    if not st.decided and st.status == "active":
        all_errors = outcome is None or all(not c.ok for c in outcome.candidates)
        _tracker.give_up(st, "failed" if all_errors else "eager", reason, SETTINGS)
        children = [c.name for c in st.children if c.status == "active"]
        if children:
            logger.info("%s: trying its children instead: %s", st.name, ", ".join(children))


def tune_pending(max_modules: int | None = None) -> int:
    """Tune every recorded signature now, outermost modules first. Returns how many signatures were tuned."""
    done = 0
    tried: set[int] = set()
    while True:
        todo = [(st, sig) for st in _tracker.tracked_states(alive_only=True) if st.status == "active"
                for sig in list(st.signatures.values())
                if sig.status == "recording" and sig.samples and id(sig) not in tried]
        if not todo:
            return done
        todo.sort(key=lambda pair: pair[0].depth)
        st, sig = todo[0]
        tried.add(id(sig))
        tune_signature(st, sig)
        done += 1
        if max_modules is not None and done >= max_modules:
            return done
