"""Deciding one recorded signature, and THE place a decision is committed: install the winner, or stay eager.

`decide(...)` claims the signature (recording -> tuning), runs the tuning step under aitune's own-work guard and
the grad and inference modes it was recorded in (the persistent cache first, `_reuse`, then the strategy), and
commits the outcome with `commit`: the winner's engine is installed on the signature
(`SignatureRecord.install_engine`), its range frozen to the samples it was checked on, and the samples
released; or the signature stays eager with the reason. A failure inside tuning is caught and becomes the
reason; `Decision.raise_if_strict()` re-raises it in strict mode once the front has done its own bookkeeping.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from aitune.torch import _tree
from aitune.torch._errors import AITuneError, TuningError
from aitune.torch._samples import Sample, SignatureRecord, first_device, modes_of, recorded_modes
from aitune.torch._signature._background import WORKER, eager_in_place
from aitune.torch._signature._inplace import ACTIVITY, InPlaceCheck
from aitune.torch._signature._purity import Purity, Watch, from_record, persisted, probe
from aitune.torch._signature._quiet import libraries_quiet
from aitune.torch._signature._record import release_samples
from aitune.torch._signature._reuse import decide_shared, digest, key_fields, peek
from aitune.torch._signature._rng import rng_kept
from aitune.torch._signature._route import CALLERS, OwnWork
from aitune.torch.tune_strategy._base import CandidateResult, TuneJob, TuneOutcome, TuneStrategy

if TYPE_CHECKING:
    from aitune.torch.backend._base import Backend
    from aitune.torch.cache._store import EngineStore

logger = logging.getLogger(__name__)


def make_job(module: torch.nn.Module, name: str, signature: SignatureRecord, samples: Sequence[Sample],
             device: torch.device, backends: Sequence[Backend], *, progress: bool = True) -> TuneJob:
    """A TuneJob with the global settings (tolerances, timing, min_speedup, strict) as they are now."""
    from aitune.torch.config import config as global_config

    return TuneJob(module=module, name=name, signature=signature, samples=list(samples), device=device,
                   backends=list(backends), tolerances=dict(global_config.tolerances),
                   min_speedup=float(global_config.min_speedup), warmup=int(global_config.timing_warmup),
                   iterations=int(global_config.timing_iterations),
                   max_seconds=float(global_config.timing_max_seconds), strict=bool(global_config.strict),
                   progress=progress, confirm_calls=int(global_config.confirm_calls))


def run(job: TuneJob, strategy: TuneStrategy, store: EngineStore | None = None) -> TuneOutcome:
    """The tuning step: the cached decision if there is one, else the strategy's; under the grad, inference,
    autocast and deterministic modes the signature was recorded in (part of its key)."""
    with recorded(job.signature.key):
        return decide_shared(job, strategy, store)


@contextlib.contextmanager
def recorded(key: Any) -> Iterator[None]:
    """The grad, inference, autocast and deterministic modes a signature was recorded in."""
    with torch.set_grad_enabled(bool(key[0])), recorded_inference_mode(bool(key[1])), recorded_modes(modes_of(key)):
        yield


def recorded_inference_mode(enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """inference_mode when the signature was recorded in it, else nothing: `torch.inference_mode(False)` is not
    a no-op (it switches grad mode on)."""
    return torch.inference_mode() if enabled else contextlib.nullcontext()


def candidates(device: torch.device, configured: Sequence[Backend] | None) -> list[Backend]:
    """The backends to try: those configured, else the device's defaults."""
    from aitune.torch.backend._defaults import default_backends

    return list(configured) if configured else default_backends(device)


@dataclass
class Plan:
    """How a front wants a signature tuned: the strategy, the backends it tries, and, when there are none, why."""

    strategy: TuneStrategy
    backends: list[Backend]
    why_none: str | None = None
    #: Module-side Python values an engine running no Python would bake in (`_purity`): watched once it serves.
    watch: Watch | None = None
    #: Tune the module whole only when its forward traces as one graph (JIT mode's `detect_graph_breaks`).
    one_graph: bool = False
    #: The call was shown pure (`_purity`): an engine that runs no Python may serve it, `watch` watched.
    pure: bool = False
    #: The purity verdict behind `pure` (persisted with the decision, `_purity.persisted`).
    verdict: Purity | None = None


@dataclass
class Decision:
    """What became of one signature's tuning. `winner` is None when it stays eager."""

    name: str
    outcome: TuneOutcome | None
    error: BaseException | None
    seconds: float
    strict: bool

    @property
    def winner(self) -> CandidateResult | None:
        return self.outcome.winner if self.outcome is not None and self.error is None else None

    def raise_if_strict(self) -> None:
        """In strict mode, a failure inside tuning reaches the caller (the signature already stays eager)."""
        if self.error is None or not self.strict:
            return
        if isinstance(self.error, AITuneError):
            raise self.error
        raise TuningError(f"tuning {self.name} failed: {self.error}", module_name=self.name) from self.error


def decide(module: torch.nn.Module, sig: SignatureRecord, plan: Callable[[torch.device], Plan], *, name: str,
           label: str | None = None, store: EngineStore | None, progress: bool, strict: bool) -> Decision | None:
    """Tune `sig` of `module` now and commit the outcome (see the module docstring); `plan(device)` gives the
    strategy and backends for the samples' device. None when another thread is tuning it already, or it has no
    sample."""
    with sig.lock:
        if sig.status not in ("recording", "queued") or not sig.samples:
            return None
        sig.status = "tuning"
        samples = list(sig.samples)
    label = label or name
    ACTIVITY.bump()
    start = time.perf_counter()
    outcome: TuneOutcome | None = None
    error: BaseException | None = None
    reference = None
    chosen = None
    try:
        device = first_device(samples)
        peeked: list[Any] = []
        chosen = restrict(plan(device), module, sig, samples, label,
                          known=None if store is None else
                          lambda p: _stored_verdict(p, module, name, sig, samples, device, store, peeked))
        if not chosen.backends and chosen.why_none:
            outcome = TuneOutcome(None, [], None, chosen.why_none)
        else:
            shapes = ", ".join(f"{d['name']}{tuple(lo)}..{tuple(hi)}" if lo != hi else f"{d['name']}{tuple(lo)}"
                               for d, lo, hi in zip(sig.description, sig.min_shapes, sig.max_shapes))
            logger.info("%s: tuning on %s with %d sample(s) [%s]; %s over %s", label, device, len(samples), shapes,
                        chosen.strategy.describe(), ", ".join(b.describe() for b in chosen.backends) or "no backend")
            job = make_job(module, name, sig, samples, device, chosen.backends, progress=progress)
            job.pure = sig.shown_pure = chosen.pure
            if chosen.pure and chosen.verdict is not None:
                job.purity_record = persisted(chosen.verdict)
            if peeked:
                job.peeked = peeked[0]
            if WORKER.in_worker():
                job.eager_in_place = lambda: eager_in_place(sig, device)
            else:
                sig.timing = {"thread": "the calling thread, the script waiting for it"}
            with OwnWork(), libraries_quiet(), rng_kept():
                outcome = run(job, chosen.strategy, store)
                reference = job.timing_sample() if outcome.winner is not None else None
                if outcome.winner is not None and WORKER.in_worker():
                    _graph_at_switch(module, sig, samples, outcome.winner, job)
    except Exception as e:  # any failure inside tuning leaves the signature eager (strict mode re-raises it)
        error = e
    decision = Decision(name, outcome, error, time.perf_counter() - start, strict)
    ACTIVITY.bump()
    commit(sig, decision, samples, reference, label, watch=chosen.watch if chosen is not None else None)
    return decision


def _graph_at_switch(module: torch.nn.Module, sig: SignatureRecord, samples: Sequence[Sample],
                     winner: CandidateResult, job: TuneJob) -> None:
    """Background tuning on CUDA: a winner whose call is static gets its CUDA graph on the serving thread's calls
    (`backend._graphs.GraphAtSwitch`), where a graph may be captured; not where a CUDA graph is ruled out (an
    output aliasing what the caller may edit, a cache object among the inputs, several calling threads)."""
    from aitune.torch._signature._confirm import LiveCheck

    engine = winner.engine
    # An engine from the cache is on probation first (`LiveCheck`): the graph goes inside, so that the probation's
    # comparisons (which synchronize) never run within a capture.
    probation = engine if isinstance(engine, LiveCheck) else None
    inner = probation.engine if probation is not None else engine
    if inner is None or job.device.type != "cuda" or not getattr(type(inner), "static_call", False):
        return
    if sig.aliases is not None or CALLERS.several() or any(_tree.holds_state((s.args, s.kwargs)) for s in samples):
        return
    from aitune.torch._fingerprint import live_weights
    from aitune.torch.backend._graphs import TURN_CALLS, GraphAtSwitch

    turns = InPlaceCheck(TURN_CALLS, subject="the CUDA graph", rival="the engine inside it",
                         adjacent=lambda: sig.calls)
    graph = GraphAtSwitch(inner, job.device, keep=list(live_weights(module)), turns=turns,
                          tolerances=dict(job.tolerances),
                          crowded=lambda: "several threads call modules" if CALLERS.several() else None,
                          ready=lambda: sig.inplace is None or sig.inplace.verdict != "running")
    if probation is not None:
        probation.engine = graph
        object.__setattr__(probation, "binds_weight_storage", True)
    else:
        winner.engine = graph


def _stored_verdict(plan: Plan, module: torch.nn.Module, name: str, sig: SignatureRecord,
                    samples: Sequence[Sample], device: torch.device, store: EngineStore,
                    peeked: list[Any]) -> Purity | None:
    """The purity verdict stored with the cached decision for `plan` as it stands (`_purity.from_record`), so
    that a reused decision needs no trace; None when there is none or it no longer holds. The entry found is kept
    in `peeked` for the cache lookup that follows, which then does not read and verify it again."""
    if not plan.backends:
        return None
    try:
        key = digest(key_fields(make_job(module, name, sig, samples, device, plan.backends), plan.strategy))
    except Exception:  # a module the key cannot describe: traced, and tuned without the cache, as always
        return None
    hit = peek(store, key)
    if hit is None or not isinstance(hit.record.get("purity"), dict):
        return None
    verdict = from_record(hit.record["purity"], module)
    if verdict is not None:
        peeked.append((key, hit))
        logger.info("%s: shown pure by the verdict stored with its cache entry (%s; the code it traced is "
                    "unchanged), not traced again", name, key[:12])
    return verdict


def restrict(plan: Plan, module: torch.nn.Module, sig: SignatureRecord, samples: Sequence[Sample], name: str,
             known: Callable[[Plan], Purity | None] | None = None) -> Plan:
    """The plan narrowed to what may serve this signature at all, whichever front asked:

    - a forward that changes the module's own state (`sig.state_change`) is served by no engine;
    - while several threads call modules, no backend that builds with torch.export (`Backend.exports_program`)
      and none that captures CUDA graphs;
    - a call whose outputs hold Python numbers only by backends that run the module's Python (kind "jit");
    - a call whose output aliases a parameter, buffer or input (`sig.aliases`) only by backends that keep that;
    - a call whose inputs hold a state object (a cache) by no CUDA-graph engine;
    - a call that needs autograd (grad enabled, and an input or a parameter requires grad) only by backends
      whose engines carry it (`Backend.supports_autograd`);
    - and last, backends that run no Python only for a call shown pure (`_pure_or_python`; `known(plan)` may
      give the verdict without a trace: one stored with the cached decision for that plan).
    """
    if sig.state_change is not None:
        return Plan(plan.strategy, [], f"its forward changes the module's own state ({sig.state_change}), which an "
                                       "engine would not reproduce")
    device = first_device(samples)
    if CALLERS.several():
        plan = _narrowed(sig, plan, lambda b: not b.exports_program(), name,
                         "several threads call modules, and torch.export (which it builds with) patches torch for "
                         "the whole process while it traces")
        plan = _narrowed(sig, plan, lambda b: not b.uses_cuda_graphs(device), name,
                         "several threads call modules, and a CUDA graph serves only the thread that captured it "
                         "(and cannot be captured safely while other threads run on the GPU)")
    if any(_holds_numbers(s.outputs) for s in samples):
        plan = _narrowed(sig, plan, lambda b: b.kind == "jit", name,
                         "its outputs hold Python numbers (perhaps computed from the data), which an exported engine, "
                         "running no Python, would return as the values of its samples")
    if sig.aliases is not None:
        plan = _narrowed(sig, plan, lambda b: b.keeps_aliases(device), name,
                         f"its output shares memory with what the caller may edit through it ({sig.aliases})")
    if any(_tree.holds_state((s.args, s.kwargs)) for s in samples) and not _static_state(samples):
        # A cache object passed in (a transformers DynamicCache): a CUDA graph would leave graph-owned memory in
        # the caller's object (tensors the cache grows by), which the next replay overwrites. A cache whose
        # tensors are all allocated once and marked static (StaticCache) is updated in place, where it is.
        plan = _narrowed(sig, plan, lambda b: not b.uses_cuda_graphs(device), name,
                         "its inputs hold an object with tensors (a cache) that are not all marked static "
                         "(torch._dynamo.mark_static_address), on which a CUDA graph cannot be captured safely")
    if needs_autograd(module, sig, samples):
        kept = [b for b in plan.backends if b.supports_autograd]
        if not kept and plan.backends:
            dropped = ", ".join(b.describe() for b in plan.backends)
            return Plan(plan.strategy, [], f"its calls need autograd (grad is enabled and parameters or inputs "
                                           f"require grad), which {dropped} cannot carry; call it under "
                                           f"torch.no_grad() or torch.inference_mode() for inference")
        plan = dataclasses.replace(plan, backends=kept)
    return _pure_or_python(plan, module, sig, samples, name, known)


def _pure_or_python(plan: Plan, module: torch.nn.Module, sig: SignatureRecord, samples: Sequence[Sample],
                    name: str, known: Callable[[Plan], Purity | None] | None = None) -> Plan:
    """Backends that run no Python (kind "aot") only for a call shown to be pure (`_purity`); the module-side
    values such an engine would bake in go with the plan, to be watched. A signature whose watched values kept
    changing (`sig.python_only`) is served by Python-running backends only."""
    if not plan.backends or CALLERS.several():
        # While several threads run, the trace's settings (Dynamo's, process-wide) would reach their compiles
        # too; exported engines are not tried then anyway (`Backend.exports_program`).
        return plan
    if sig.python_only is not None:
        plan = _narrowed(sig, plan, lambda b: b.kind == "jit", name, sig.python_only)
    verdict = (known(plan) if known is not None and sig.python_only is None else None) or \
        purity(module, sig, samples[0])
    if plan.one_graph and verdict.breaks:
        why = f"its forward breaks into several graphs ({'; '.join(verdict.breaks[:3])})"
        logger.info("%s: not tuned whole: %s", name, why)
        return Plan(plan.strategy, [], why[:500])
    if verdict.outside is not None:
        return _narrowed(sig, plan, lambda b: False, name, verdict.outside)
    if verdict.impure is not None:
        return _narrowed(sig, plan, lambda b: b.kind == "jit", name,
                         f"{verdict.impure}; engines that run its Python (or eager) serve it")
    return dataclasses.replace(plan, watch=verdict.watch or None, pure=sig.python_only is None, verdict=verdict)


def purity(module: torch.nn.Module, sig: SignatureRecord, sample: Sample) -> Purity:
    """`_purity.probe` for a call like `sample`, as aitune's own work under the signature's recorded modes; a
    probe that fails leaves the call not shown pure."""
    try:
        with OwnWork(), libraries_quiet(), rng_kept(), recorded(sig.key):
            return probe(module, sig.key, sample)
    except Exception as e:  # the probe is aitune's own work: if it fails, the call is not shown pure
        return Purity(f"its forward could not be analysed ({type(e).__name__}: {e})"[:300], Watch(()))


def _static_state(samples: Sequence[Sample]) -> bool:
    """Every sample's state objects hold tensors, all marked static (allocated once, updated in place)."""
    for s in samples:
        tensors = _tree.state_tensors((s.args, s.kwargs))
        if not tensors or not all(_tree.static_address(t) for t in tensors):
            return False
    return True


def _holds_numbers(outputs: Any) -> bool:
    return any(isinstance(leaf, (bool, int, float)) for _, leaf in _tree.leaf_paths(outputs))


def _narrowed(sig: SignatureRecord, plan: Plan, keep: Callable[[Backend], bool], name: str, why: str) -> Plan:
    """`plan` without the backends `keep` refuses, named in one INFO line with `why` (and in the report)."""
    kept = [b for b in plan.backends if keep(b)]
    if len(kept) == len(plan.backends):
        return plan
    dropped = [b for b in plan.backends if b not in kept]
    for b in dropped:
        sig.not_tried[b.describe()] = why
    logger.info("%s: not trying %s: %s", name, ", ".join(b.describe() for b in dropped), why)
    return dataclasses.replace(plan, backends=kept, why_none=plan.why_none if kept else why)


def runs_no_python_of(engine: Any) -> bool:
    """An engine of a Python-running backend that replays a saved trace instead (a torch.compile function loaded
    from the cache): like an exported engine, it bakes in the module-side values its trace read."""
    return bool(getattr(engine, "runs_no_python", False))


def needs_autograd(module: torch.nn.Module, sig: SignatureRecord, samples: Sequence[Sample]) -> bool:
    if not sig.key[0]:  # recorded with grad disabled (no_grad); inference_mode disables it too
        return False
    if any(p.requires_grad for p in module.parameters()):
        return True
    return any(t.requires_grad for s in samples for t in _tree.all_tensors((s.args, s.kwargs)))


def commit(sig: SignatureRecord, decision: Decision, samples: Sequence[Sample], reference: Sample | None,
           label: str, *, watch: Watch | None = None) -> None:
    """Install the winner on `sig`, or leave it eager with the reason; its samples are released either way.
    `watch`: the module-side values a winner that runs no Python baked in (checked before its calls, `_route`)."""
    outcome = decision.outcome
    if outcome is not None:
        sig.candidates = [c.to_report() for c in outcome.candidates]
        sig.cache = outcome.cache
        sig.reuse = outcome.reuse
    winner = decision.winner
    if winner is not None and winner.engine is not None and outcome is not None:
        sig.freeze_engine_range(samples)
        sig.reference = reference
        sig.install_engine(winner, outcome.eager_latency_ms)
        backend = winner.backend_obj
        runs_no_python = backend is not None and (backend.kind != "jit" or runs_no_python_of(winner.engine))
        sig.watch = watch if watch and runs_no_python else None
        from aitune.torch.config import config as global_config

        if backend is not None and backend.serves_new_sizes(first_device(samples)):
            sig.open_sizes(int(global_config.confirm_calls), dict(global_config.tolerances))
        check_calls = int(global_config.inplace_check_calls)
        sig.inplace = InPlaceCheck(check_calls) if check_calls > 0 else None
        release_samples(sig)
        eager, tuned = outcome.eager_latency_ms, winner.latency_ms
        speed = f", {eager / tuned:.2f}x faster ({eager:.3f} ms -> {tuned:.3f} ms)" if eager and tuned else ""
        cached = {"hit": " (from the cache)", "shared": " (an identical module's decision)"}.get(
            outcome.cache or "", "")
        logger.info("%s: tuned with %s%s%s", label, winner.backend, speed, cached)
        return
    error = decision.error
    reason = (f"{type(error).__name__}: {error}" if error is not None
              else (outcome.reason if outcome is not None and outcome.reason else "not tuned"))
    with sig.lock:
        sig.status = "eager"
        sig.reason = reason[:500]
        sig.eager_latency_ms = outcome.eager_latency_ms if outcome is not None else None
    release_samples(sig)
    logger.info("%s: stays eager (%s)", label, reason[:300])
