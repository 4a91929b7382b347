"""Tuning strategies: given a module, its recorded samples and candidate backends, pick an engine or none.

The shared step, `evaluate`, builds one candidate, checks it against the recorded eager outputs on every
sample (outputs and in-place input changes) and times it. Strategies differ only in which candidates they
try and how they choose.
"""

from __future__ import annotations

import abc
import logging
import re
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from aitune.torch import _tree
from aitune.torch._checking import compare_outputs, same_values
from aitune.torch._errors import TuningError
from aitune.torch._samples import Sample, SignatureRecord
from aitune.torch._timing import Abandoned, checkpoint, measure_latency_ms
from aitune.torch.backend._base import Backend, Engine

logger = logging.getLogger(__name__)

#: Seconds between "still building" progress lines.
PROGRESS_INTERVAL_S = 10.0


@dataclass
class TuneJob:
    """Everything a strategy needs to tune one module on one input signature."""

    module: torch.nn.Module
    name: str
    signature: SignatureRecord
    samples: Sequence[Sample]
    device: torch.device
    backends: Sequence[Backend]
    tolerances: dict[str, tuple[float, float]]
    min_speedup: float = 1.05
    warmup: int = 3
    iterations: int = 20
    max_seconds: float = 2.0
    strict: bool = False
    progress: bool = True
    #: Live calls an engine from a file is shadowed on before it serves alone (see `_confirm`).
    confirm_calls: int = 0
    #: The call was shown pure (`_signature._purity`): a saved trace of it (which runs none of the module's
    #: Python) may be stored and reused.
    pure: bool = False
    #: Where the eager latency can be taken in place instead of timed here (background tuning: the script's own
    #: calls, `_signature._background.eager_in_place`); None from it means: time it here.
    eager_in_place: Callable[[], float | None] | None = field(default=None, repr=False)
    #: The pure verdict to store with the decision (`_signature._purity.persisted`), if it can be stored.
    purity_record: dict[str, Any] | None = field(default=None, repr=False)
    #: (key, entry) of the persistent cache read already for this job (its stored verdict was used).
    peeked: tuple[str, Any] | None = field(default=None, repr=False)
    _eager_ms: float | None = field(default=None, repr=False)

    def timing_sample(self) -> Sample:
        """The sample whose shapes were seen most often."""
        common = self.signature.most_common_shapes
        for s in self.samples:
            if tuple(tuple(t.shape) for t in _tree.tensors(_named(s))) == common:
                return s
        return self.samples[0]

    def time(self, fn: Callable[..., Any]) -> float:
        """Latency of `fn` on the timing sample. A call that changes its inputs (a cache it fills) gets them fresh
        each time, outside the measured window, so every run does the work the recorded call did: refilled in
        place where the call kept their structure (the same memory, as a static cache is across real calls, so
        CUDA-graph engines replay rather than record again), else copied anew."""
        s = self.timing_sample()
        held = [_tree.clone((s.args, s.kwargs))]

        def fresh() -> tuple[tuple[Any, ...], dict[str, Any]]:
            # Nothing to refresh when the call leaves its inputs as they were.
            if s.inputs_after is not None and not _tree.refill(held[0], (s.args, s.kwargs)):
                held[0] = _tree.clone((s.args, s.kwargs))
            return held[0]

        return measure_latency_ms(fn, fresh, self.device, warmup=self.warmup, iterations=self.iterations,
                                  max_seconds=self.max_seconds)

    def eager_latency_ms(self) -> float:
        if self._eager_ms is None and self.eager_in_place is not None:
            self._eager_ms = self.eager_in_place()
        if self._eager_ms is None:
            module = self.module
            self._eager_ms = self.time(lambda *a, **k: module.forward(*a, **k))
        return self._eager_ms


def _named(sample: Sample) -> dict[str, Any]:
    return {"args": sample.args, "kwargs": sample.kwargs}


@dataclass
class CandidateResult:
    """One backend's outcome on one signature (reported under `candidates`)."""

    backend: str
    ok: bool
    latency_ms: float | None = None
    max_abs_error: float | None = None
    error: str | None = None
    build_s: float | None = None
    engine: Engine | None = field(default=None, repr=False)
    backend_obj: Backend | None = field(default=None, repr=False)

    def to_report(self) -> dict[str, Any]:
        return {"backend": self.backend, "ok": self.ok, "latency_ms": _round(self.latency_ms),
                "max_abs_error": self.max_abs_error, "error": self.error, "build_s": _round(self.build_s)}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


@dataclass
class TuneOutcome:
    """A strategy's decision. `winner` is None when the module should stay eager."""

    winner: CandidateResult | None
    candidates: list[CandidateResult]
    eager_latency_ms: float | None
    reason: str | None = None
    #: Where the decision came from: None (tuned now), "hit" (reused from the persistent cache).
    cache: str | None = None
    #: For a reused decision: how its engine was obtained and how its latency compared (the report's
    #: `cache_reuse`).
    reuse: dict[str, Any] | None = None


class _Heartbeat:
    """Logs a progress line every few seconds while a long build runs."""

    def __init__(self, what: str, enabled: bool) -> None:
        self._what = what
        self._enabled = enabled
        self._stop = threading.Event()
        self._start = time.perf_counter()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Heartbeat:
        if self._enabled:
            self._thread = threading.Thread(target=self._run, name="aitune-progress", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(PROGRESS_INTERVAL_S):
            logger.info("  ... still building %s (%.0f s)", self._what, time.perf_counter() - self._start)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _error_text(e: BaseException) -> str:
    """The first line of an error, without the terminal colours some exporters put in their messages."""
    text = _ANSI.sub("", f"{type(e).__name__}: {e}").strip()
    first = text.splitlines()[0] if text else type(e).__name__
    return first[:500]


def evaluate(job: TuneJob, backend: Backend, *, measure: bool = True) -> CandidateResult:
    """Build `backend` for the job, check it on every sample, and time it. Never raises unless strict."""
    desc = backend.describe()
    reason = backend.unavailable_reason() or backend.unsupported_reason(job.device)
    if reason is not None:
        logger.info("  %s: skipped (%s)", desc, reason)
        return CandidateResult(desc, ok=False, error=reason, backend_obj=backend)
    checkpoint()
    start = time.perf_counter()
    try:
        with _Heartbeat(f"{job.name} with {desc}", job.progress):
            engine = backend.build(job.module, job.signature, job.samples, job.device)
    except Exception as e:  # a backend that cannot build rejects its candidate (strict mode raises)
        checkpoint()  # a build that failed because the interpreter is shutting down is not the backend's failure
        logger.info("  %s: build failed: %s", desc, _error_text(e))
        logger.debug("build failure detail:\n%s", traceback.format_exc())
        if job.strict:
            raise TuningError(f"{desc} failed to build {job.name}: {_error_text(e)}", module_name=job.name,
                              backend=desc) from e
        return CandidateResult(desc, ok=False, error=f"build: {_error_text(e)}", backend_obj=backend,
                               build_s=time.perf_counter() - start)
    return check(job, backend, engine, build_s=time.perf_counter() - start, measure=measure)


def check(job: TuneJob, backend: Backend, engine: Engine, *, build_s: float | None = None, measure: bool = True,
          what: str = "built in") -> CandidateResult:
    """Check a built or loaded `engine` against the recorded eager outputs on every sample, then time it.

    The engine is released when it is rejected. Never raises unless the job is strict.
    """
    desc = backend.describe()
    result = CandidateResult(desc, ok=False, build_s=build_s, engine=engine, backend_obj=backend)
    try:
        checkpoint()
        result.error, worst = _check_samples(job, engine)
        if result.error is None:
            result.max_abs_error = worst
            if measure:
                result.latency_ms = job.time(engine)
            result.ok = True
    except Abandoned:
        engine.release()
        raise
    except Exception as e:  # an engine that fails on a sample is rejected (strict mode raises)
        logger.debug("check failure detail:\n%s", traceback.format_exc())
        if job.strict:
            raise TuningError(f"{desc} failed while running {job.name}: {_error_text(e)}", module_name=job.name,
                              backend=desc) from e
        result.error = f"run: {_error_text(e)}"
    if result.ok:
        lat = f"{result.latency_ms:.3f} ms" if result.latency_ms is not None else "not timed"
        logger.info("  %s: ok, %s, max abs error %.2g, %s %.1f s", desc, lat, result.max_abs_error or 0.0, what,
                    build_s or 0.0)
    else:
        logger.info("  %s: rejected (%s)", desc, result.error)
        if result.engine is not None:
            result.engine.release()
            result.engine = None
    return result


def _check_samples(job: TuneJob, engine: Engine) -> tuple[str | None, float]:
    """(what is wrong, or None; the worst absolute error) of `engine` on every sample, each run on its own copy.

    Every result is checked again once all samples ran: an engine whose outputs (or the objects it filled, such as
    a cache) live in memory a later run overwrites, as CUDA-graph memory does, fails there. A call that needs
    autograd must give the same gradients as eager."""
    compute_dtype = getattr(engine, "compute_dtype", None)
    worst = 0.0
    kept = []
    for i, sample in enumerate(job.samples):
        args, kwargs = _tree.clone((sample.args, sample.kwargs))
        out = engine(*args, **kwargs)
        error, err = _compare_sample(job, sample, out, (args, kwargs), compute_dtype)
        if error is not None:
            return f"sample {i}: {error}", worst
        worst = max(worst, err)
        kept.append((i, sample, out, (args, kwargs)))
    for i, sample, out, inputs in kept:
        error, _ = _compare_sample(job, sample, out, inputs, compute_dtype)
        if error is not None:
            return (f"sample {i}: after the later samples ran: {error} (the engine's results do not survive its "
                    f"next call)"), worst
    for i, sample in enumerate(job.samples):
        if any(t.requires_grad for t in _tree.all_tensors(sample.outputs)):
            error = _gradients_differ(job, engine, sample, compute_dtype)
            if error is not None:
                return f"sample {i}: {error}", worst
    return None, worst


def _compare_sample(job: TuneJob, sample: Sample, out: Any, inputs: Any,
                    compute_dtype: torch.dtype | None) -> tuple[str | None, float]:
    verdict = compare_outputs(sample.outputs, out, job.tolerances, compute_dtype)
    if not verdict.ok:
        return verdict.reason, 0.0
    if sample.inputs_after is None:
        if not same_values((sample.args, sample.kwargs), inputs):
            return "changes its inputs in place, which eager does not", 0.0
        return None, verdict.max_abs_error
    # What eager wrote into its inputs (a cache it filled) is computed too: held to the same tolerances.
    written = compare_outputs(sample.inputs_after, inputs, job.tolerances, compute_dtype, path="inputs after the call")
    if not written.ok:
        return f"changes its inputs in place differently from eager ({written.reason})", 0.0
    return None, max(verdict.max_abs_error, written.max_abs_error)


def _gradients_differ(job: TuneJob, engine: Engine, sample: Sample, compute_dtype: torch.dtype | None) -> str | None:
    """Backward through eager and through the engine, on copies of the sample: the same gradients?"""
    module = job.module
    params = [p for p in module.parameters() if p.requires_grad]

    def grads(fn: Callable[..., Any]) -> list[torch.Tensor | None]:
        args, kwargs = _tree.clone((sample.args, sample.kwargs))
        leaves = [t for t in _tree.all_tensors((args, kwargs)) if t.requires_grad] + params
        with torch.enable_grad():
            outs = [t for t in _tree.all_tensors(fn(*args, **kwargs)) if t.requires_grad]
            total = sum((t.float().sum() for t in outs), torch.zeros((), device=job.device))
            found = torch.autograd.grad(total, leaves, allow_unused=True)
        return [None if g is None else g.detach() for g in found]

    want, got = grads(module.forward), grads(engine)
    for index, (w, g) in enumerate(zip(want, got)):
        if (w is None) != (g is None):
            return f"backward: gradient {index} is {'missing' if g is None else 'present'} unlike eager's"
        if w is not None and g is not None:
            verdict = compare_outputs(w, g, job.tolerances, compute_dtype, path=f"gradient {index}")
            if not verdict.ok:
                return f"backward: {verdict.reason}"
    return None


class TuneStrategy(abc.ABC):
    """Base of every strategy. `backends` None means: the candidates configured for JIT mode."""

    def __init__(self, backends: Sequence[Backend] | None = None) -> None:
        self.backends = list(backends) if backends is not None else None

    @abc.abstractmethod
    def tune(self, job: TuneJob) -> TuneOutcome:
        """Try the job's backends and decide."""

    def describe(self) -> str:
        return type(self).__name__

    def enable_performance_validation(self, enabled: bool = True) -> TuneStrategy:
        """Accepted for scripts written for NVIDIA AITune; a no-op here: every candidate is always checked against
        eager and timed on the recorded samples, and one that is not faster (`min_speedup`) is not used."""
        return self

    def enable_find_max_batch_size(self, enabled: bool = True) -> TuneStrategy:
        """Accepted for scripts written for NVIDIA AITune; a no-op here: aitune tunes the batch sizes a script
        calls with, and searches for no other."""
        return self
