"""The three strategies: one backend, first that works, and fastest that works (the default)."""

from __future__ import annotations

from collections.abc import Sequence

from aitune.torch.backend._base import Backend
from aitune.torch.tune_strategy._base import CandidateResult, TuneJob, TuneOutcome, TuneStrategy, evaluate


class OneBackendStrategy(TuneStrategy):
    """Use exactly one backend: accepted when it builds and its outputs match eager, whatever its speed."""

    def __init__(self, backend: Backend) -> None:
        super().__init__([backend])
        self.backend = backend

    def tune(self, job: TuneJob) -> TuneOutcome:
        eager = job.eager_latency_ms()
        result = evaluate(job, self.backend)
        return TuneOutcome(result if result.ok else None, [result], eager,
                           None if result.ok else f"{result.backend}: {result.error}")


class FirstWinsStrategy(TuneStrategy):
    """Try backends in order; the first one that builds and matches eager is used (timed for the report)."""

    def tune(self, job: TuneJob) -> TuneOutcome:
        eager = job.eager_latency_ms()
        results: list[CandidateResult] = []
        for backend in job.backends:
            result = evaluate(job, backend)
            results.append(result)
            if result.ok:
                return TuneOutcome(result, results, eager)
        return TuneOutcome(None, results, eager, _all_failed_reason(results))


class HighestThroughputStrategy(TuneStrategy):
    """Try every backend; use the fastest correct one if it beats eager by `min_speedup` (the default)."""

    def tune(self, job: TuneJob) -> TuneOutcome:
        eager = job.eager_latency_ms()
        results = [evaluate(job, backend) for backend in job.backends]
        good = [r for r in results if r.ok and r.latency_ms is not None]
        if not good:
            return TuneOutcome(None, results, eager, _all_failed_reason(results))
        best = min(good, key=lambda r: r.latency_ms or 0.0)
        for r in good:
            if r is not best and r.engine is not None:
                r.engine.release()
                r.engine = None
        assert best.latency_ms is not None
        if best.latency_ms * job.min_speedup > eager:
            if best.engine is not None:
                best.engine.release()
                best.engine = None
            return TuneOutcome(None, results, eager,
                               f"fastest candidate {best.backend} ({best.latency_ms:.3f} ms) does not beat eager "
                               f"({eager:.3f} ms) by the required {job.min_speedup:g}x")
        return TuneOutcome(best, results, eager)


def _all_failed_reason(results: Sequence[CandidateResult]) -> str:
    if not results:
        return "no candidate backend"
    return "no candidate worked: " + "; ".join(f"{r.backend}: {r.error}" for r in results)


#: The names a configuration may give a strategy (`config.strategy`), in one place.
#: NVIDIA AITune's name for the measuring strategy (the same class).
MaxThroughputStrategy = HighestThroughputStrategy

STRATEGY_NAMES = ("highest_throughput", "first_wins", "one_backend")


def strategy_named(name: str, backends: Sequence[Backend]) -> TuneStrategy:
    """The strategy of a configured name (see STRATEGY_NAMES); `one_backend` needs exactly one backend."""
    if name == "first_wins":
        return FirstWinsStrategy()
    if name == "one_backend":
        if len(backends) != 1:
            raise ValueError(f"strategy 'one_backend' needs exactly one backend in config.backends, got "
                             f"{len(backends)}: {', '.join(b.describe() for b in backends)}")
        return OneBackendStrategy(backends[0])
    if name == "highest_throughput":
        return HighestThroughputStrategy()
    raise ValueError(f"unknown strategy {name!r}; one of {', '.join(STRATEGY_NAMES)}")
