"""JIT mode's tuning: which backends and strategy a module gets, and the top-down walk that follows a decision.

Tuning runs in the thread whose call completed the recording, through the shared signature runtime
(`_signature._decide.decide`): it claims the signature, tunes it (other threads meanwhile run that module
eagerly), and commits the winner or the eager decision. What follows is JIT mode's own: a tuned module's
descendants are detached (they run inside its engine); a module that stays eager hands over to its children.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from aitune.torch import cache
from aitune.torch._fingerprint import live_weights, weights_state
from aitune.torch._samples import SignatureRecord, first_device
from aitune.torch._signature._background import WORKER
from aitune.torch._signature._decide import Decision, Plan, candidates, decide, restrict
from aitune.torch._signature._record import release_samples
from aitune.torch._signature._route import drop_engine
from aitune.torch._signature._weights import DATA_ACCESSES, Baseline, watch
from aitune.torch.jit import _tracker
from aitune.torch.jit._tracker import LOCK, ModuleState
from aitune.torch.jit.config import SETTINGS, config
from aitune.torch.tune_strategy import HighestThroughputStrategy, TuneStrategy, strategy_named

logger = logging.getLogger(__name__)


class DecisionListeners:
    """Called after every decision (the report keeps itself current through this)."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[], None]] = []

    def add(self, listener: Callable[[], None]) -> None:
        if listener not in self._listeners:
            self._listeners.append(listener)

    def notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # a listener (the report writer) never fails the user's call
                logger.debug("decision listener failed", exc_info=True)


LISTENERS = DecisionListeners()


class TuningBudget:
    """The process's tuning so far against `max_tunings` and `max_tuning_seconds`: past either, new signatures
    stay eager (one log line says so, each signature's reason says why)."""

    def __init__(self) -> None:
        self.tunings = 0
        self.seconds = 0.0
        self._told = False

    def reset(self) -> None:
        self.tunings, self.seconds, self._told = 0, 0.0, False

    def spent(self) -> str | None:
        """Why no more tuning may start, or None while the budget lasts."""
        count, seconds = config.max_tunings, config.max_tuning_seconds
        if count is not None and self.tunings >= count:
            return f"the process's tuning budget is spent ({self.tunings} tunings, max_tunings={count})"
        if seconds is not None and self.seconds >= seconds:
            return (f"the process's tuning budget is spent ({self.seconds:.0f} s of tuning, "
                    f"max_tuning_seconds={seconds:g})")
        return None

    def refuse(self, sig: SignatureRecord, name: str, why: str) -> None:
        with sig.lock:
            if sig.status != "recording":
                return
            sig.status = "eager"
            sig.reason = f"{why}; it runs eagerly"
        if not self._told:
            self._told = True
            logger.warning("%s: new modules and signatures run eagerly from now on", why)
        else:
            logger.debug("%s: %s", name, sig.reason)

    def spend(self, decision: Decision) -> None:
        outcome = decision.outcome
        if outcome is not None and outcome.cache in ("hit", "shared"):
            return  # reused: a build and a check, not a tuning
        self.tunings += 1
        self.seconds += decision.seconds



BUDGET = TuningBudget()


def reset() -> None:
    """Start the tuning budget afresh (for tests)."""
    BUDGET.reset()


#: Why background tuning leaves a backend out (`_background` names the limits).
_NOT_IN_BACKGROUND = (
    (lambda b, device: b.uses_cuda_graphs(device),
     "background tuning: a CUDA graph cannot be captured or timed in aitune's worker while the script runs; a "
     "winner whose call is static gets its CUDA graph on the script's own calls after the switch instead"),
    (lambda b, device: b.exports_program(),
     "background tuning: torch.export, which it builds with, patches torch for the whole process while it traces, "
     "and the script's own calls run meanwhile"),
)


def _plan(st: ModuleState, device: torch.device, sig: SignatureRecord | None = None) -> Plan:
    backends = candidates(device, config.backends)
    chosen = config.strategy
    strategy: TuneStrategy = (chosen if hasattr(chosen, "tune") else
                              strategy_named(str(chosen), backends) if isinstance(chosen, str) else
                              HighestThroughputStrategy())
    if strategy.backends is not None:
        backends = list(strategy.backends)
    if SETTINGS.device is not None and not _on(device, torch.device(SETTINGS.device)):
        return Plan(strategy, [], f"its calls run on {device}, and jit_config.device is {SETTINGS.device}")
    if st.live_weights_only:
        backends = [b for b in backends if not b.bakes_weights]
        if not backends:
            return Plan(strategy, [], "its weights keep changing in place and every candidate backend holds a "
                                      "copy of them (add one that reads live weights, e.g. TorchInductorJitBackend)")
    if SETTINGS.background:
        for refused, why in _NOT_IN_BACKGROUND:
            for b in [b for b in backends if refused(b, device)]:
                backends.remove(b)
                if sig is not None:
                    sig.not_tried[b.describe()] = why
        if not backends:
            return Plan(strategy, [], "background tuning: none of its candidate backends can be built in the "
                                      "background (see not_tried)")
    return Plan(strategy, backends, one_graph=SETTINGS.detect_graph_breaks)


def _on(device: torch.device, wanted: torch.device) -> bool:
    """`device` is `wanted` (a device without an index, `cuda`, is any device of that type)."""
    return device.type == wanted.type and (wanted.index is None or device.index in (None, wanted.index))


def _dry_run(st: ModuleState, sig: SignatureRecord, module: torch.nn.Module) -> None:
    """What tuning would try for this signature, said and reported; nothing is built and it runs eagerly."""
    with sig.lock:
        if sig.status != "recording" or not sig.samples:
            return
        samples = list(sig.samples)
        sig.status = "tuning"
    try:
        chosen = restrict(_plan(st, first_device(samples)), module, sig, samples, st.name)
        tried = ", ".join(b.describe() for b in chosen.backends)
        reason = (f"dry run: would try {tried} with {chosen.strategy.describe()}" if chosen.backends
                  else f"dry run: no backend would be tried ({chosen.why_none or 'none configured'})")
    except Exception as e:  # planning is aitune's own work: the signature stays eager either way
        reason = f"dry run: planning failed ({type(e).__name__}: {e})"[:300]
    with sig.lock:
        sig.status = "eager"
        sig.reason = reason[:500]
    release_samples(sig)
    st.reason = reason[:500]
    logger.info("%s: %s", st.name, reason)


def tune_signature(st: ModuleState, sig: SignatureRecord, *, now: bool = False) -> None:
    """Tune `sig` of the module of `st` now, unless another thread is (or the module is no longer active). With
    `background` set, queue it for the worker instead (`_background`), unless `now`."""
    module = st.ref()
    if module is None or st.status != "active":
        return
    if SETTINGS.dry_run:
        _dry_run(st, sig, module)
        LISTENERS.notify()
        return
    spent = BUDGET.spent()
    if spent is not None:
        BUDGET.refuse(sig, st.name, spent)
        LISTENERS.notify()
        return
    if SETTINGS.background and not now and not WORKER.in_worker():
        WORKER.submit(st, sig, _tune_in_worker)
        return
    decision = decide(module, sig, lambda device: _plan(st, device, sig), name=st.name,
                      store=cache.configured_store(config), progress=SETTINGS.progress, strict=SETTINGS.strict)
    if decision is None:
        return
    BUDGET.spend(decision)
    with LOCK:
        st.tune_seconds += decision.seconds
        _after(st, sig, module, decision)
    LISTENERS.notify()
    decision.raise_if_strict()


def _after(st: ModuleState, sig: SignatureRecord, module: torch.nn.Module, decision: Decision) -> None:
    """The top-down walk (caller holds LOCK)."""
    if decision.winner is not None:
        if st.status != "active":  # detached meanwhile: an ancestor's engine covers it now
            drop_engine(sig)
            return
        st.param_ids, st.version_sum = weights_state(module)
        engine = decision.winner.engine
        if engine is not None and engine.bakes_weights:
            st.weights_baseline = Baseline(module)
        elif engine is not None and engine.binds_weight_storage:
            watch()  # a weight moved through `Parameter.data` must be noticed
        st.weight_tensors = list(live_weights(module))
        st.data_accesses = DATA_ACCESSES.value
        if not st.decided:
            st.decided = True
            _tracker.detach_descendants(st)
        return
    if not st.decided and st.status == "active":
        outcome = decision.outcome
        all_errors = outcome is None or bool(outcome.candidates) and all(not c.ok for c in outcome.candidates)
        _tracker.give_up(st, "failed" if all_errors else "eager", sig.reason or "not tuned", SETTINGS)
        children = [c.name for c in st.children if c.status == "active"]
        if children:
            logger.info("%s: trying its children instead: %s", st.name, ", ".join(children))


def _tune_in_worker(st: ModuleState, sig: SignatureRecord) -> None:
    tune_signature(st, sig, now=True)


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
        tune_signature(st, sig, now=True)
        done += 1
        if max_modules is not None and done >= max_modules:
            return done
