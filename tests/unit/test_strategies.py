"""Strategies choose among candidates built at a seam (FakeBackend) with real checking and timing."""

from __future__ import annotations

import pytest
import torch

from aitune.torch import _tree
from aitune.torch._errors import TuningError
from aitune.torch._samples import InputNormalizer, Sample, SignatureRecord, signature_key
from aitune.torch.tune_strategy import (
    FirstWinsStrategy,
    HighestThroughputStrategy,
    OneBackendStrategy,
    TuneJob,
)

from .helpers import FakeBackend, Net

TOL = {"float32": (1e-3, 1e-3)}


def make_job(backends: list[FakeBackend], min_speedup: float = 0.01, strict: bool = False) -> TuneJob:
    net = Net().eval()
    x = torch.randn(4, 16)
    named = InputNormalizer(net.forward).normalize((x,), {})
    sig = SignatureRecord.from_call(signature_key(named), named)
    sig.observe(_tree.shapes_of(named))
    with torch.no_grad():
        out = torch.nn.Module._wrapped_call_impl(net, x)
    samples = [Sample((x.clone(),), {}, out)]
    return TuneJob(module=net, name="Net", signature=sig, samples=samples, device=torch.device("cpu"),
                   backends=backends, tolerances=TOL, min_speedup=min_speedup, warmup=0, iterations=3,
                   max_seconds=1.0, strict=strict, progress=False)


def test_highest_throughput_picks_fastest_correct() -> None:
    slow, fast, wrong = FakeBackend(latency_ms=6), FakeBackend(latency_ms=1), FakeBackend(error=1.0)
    job = make_job([slow, wrong, fast])
    with torch.no_grad():
        outcome = HighestThroughputStrategy().tune(job)
    assert outcome.winner is not None and outcome.winner.backend_obj is fast
    assert [c.ok for c in outcome.candidates] == [True, False, True]
    assert "tolerance" in (outcome.candidates[1].error or "")


def test_margin_keeps_module_eager() -> None:
    job = make_job([FakeBackend(latency_ms=2)], min_speedup=1.05)
    with torch.no_grad():
        outcome = HighestThroughputStrategy().tune(job)
    assert outcome.winner is None and "does not beat eager" in (outcome.reason or "")


def test_first_wins_stops_at_first_working() -> None:
    broken, first, second = FakeBackend(fail_build=True), FakeBackend(latency_ms=3), FakeBackend()
    job = make_job([broken, first, second])
    with torch.no_grad():
        outcome = FirstWinsStrategy().tune(job)
    assert outcome.winner is not None and outcome.winner.backend_obj is first
    assert len(outcome.candidates) == 2 and "build" in (outcome.candidates[0].error or "")


def test_one_backend_accepts_correct_even_if_slower() -> None:
    backend = FakeBackend(latency_ms=3)
    job = make_job([], min_speedup=1.05)
    with torch.no_grad():
        outcome = OneBackendStrategy(backend).tune(job)
    assert outcome.winner is not None


def test_strict_raises_on_build_failure() -> None:
    job = make_job([FakeBackend(fail_build=True)], strict=True)
    with torch.no_grad(), pytest.raises(TuningError, match="cannot build this"):
        HighestThroughputStrategy().tune(job)
