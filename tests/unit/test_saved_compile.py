"""Saved torch.compile engines in the persistent cache (CPU, real Inductor): compiled whole while tuning and stored
with the decision, loaded without compiling, rebuilt when loading fails or the call was not shown pure, and
re-tuned when slower."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from aitune.torch import _tree
from aitune.torch._samples import InputNormalizer, Sample, SignatureRecord, signature_key
from aitune.torch._signature import _reuse
from aitune.torch.backend import TorchInductorJitBackend
from aitune.torch.backend._base import Engine
from aitune.torch.backend._inductor import ARTIFACT_FILE, CompiledEngine
from aitune.torch.cache import open_store
from aitune.torch.cache._store import EngineStore
from aitune.torch.config import config as global_config
from aitune.torch.tune_strategy import OneBackendStrategy, TuneJob

from .helpers import FakeBackend, Net

TOL = {"float16": (1e-2, 1e-2), "float32": (1e-4, 1e-4)}


def _job(net: torch.nn.Module, backends: list[Any], *, pure: bool = True, x: torch.Tensor | None = None) -> TuneJob:
    x = torch.randn(4, 16) if x is None else x
    with torch.no_grad():
        named = InputNormalizer(net.forward).normalize((x,), {})
        sig = SignatureRecord.from_call(signature_key(named), named)
        sig.observe(_tree.shapes_of(named))
        out = torch.nn.Module._wrapped_call_impl(net, x)
    job = TuneJob(module=net, name="Net", signature=sig, samples=[Sample((x.clone(),), {}, out)],
                  device=x.device, backends=backends, tolerances=TOL, min_speedup=1e-6, warmup=0,
                  iterations=3, max_seconds=1.0, progress=False)
    job.pure = sig.shown_pure = pure
    return job


def _store(tmp_path: Path) -> EngineStore:
    return open_store(tmp_path / "cache", create=True, need_secret=True,
                      settings=SimpleNamespace(cache_max_bytes=1 << 30, cache_secret_file=None))


def _decide(job: TuneJob, store: EngineStore) -> Any:
    with torch.no_grad():
        return _reuse.decide_with_cache(job, OneBackendStrategy(job.backends[0]), store)


def _bare(outcome: Any) -> Any:
    """The winner's engine, out of its live-check wrapper if it has one."""
    engine = outcome.winner.engine
    return getattr(engine, "engine", engine)


def _run(engine: Any, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = engine(x)
        return out


@pytest.fixture
def lenient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny CPU models time as noise: the latency check must not decide these tests."""
    monkeypatch.setattr(global_config, "reuse_max_slowdown", float("inf"))


def test_saved_engine_loads_without_compiling(tmp_path: Path, lenient: None, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    torch._dynamo.reset()
    net = Net().eval()
    store = _store(tmp_path)
    caplog.set_level(logging.INFO, logger="aitune")
    first = _decide(_job(net, [TorchInductorJitBackend()]), store)
    assert first.cache == "stored" and "is saved with the decision" in caplog.text
    # The candidate itself was compiled whole: what is saved is what was checked and timed.
    assert not isinstance(_bare(first), CompiledEngine)
    [saved] = list((tmp_path / "cache").rglob(ARTIFACT_FILE))
    assert saved.stat().st_size > 0

    def no_build(*_: Any, **__: Any) -> None:
        raise AssertionError("the saved engine should load, not compile")

    monkeypatch.setattr(TorchInductorJitBackend, "build", no_build)
    torch._dynamo.reset()  # nothing of the first compile left in this process
    second = _decide(_job(net, [TorchInductorJitBackend()]), store)
    assert second.cache == "hit" and second.reuse["engine"] == "loaded", second
    engine = _bare(second)
    x = torch.randn(4, 16)
    torch.testing.assert_close(_run(engine, x), _run(net, x))
    assert not isinstance(engine, CompiledEngine)
    # It reads the live weights: an in-place change flows through, as with a compiled engine.
    with torch.no_grad():
        net.head.weight.mul_(2)
    torch.testing.assert_close(_run(engine, x), _run(net, x))
    # Other strides than those it was compiled for: its guards refuse it, and the forward is compiled again.
    monkeypatch.undo()
    wide = torch.randn(16, 4).t()
    torch.testing.assert_close(_run(engine, wide), _run(net, wide))
    assert "compiling the forward again" in caplog.text


def test_not_pure_or_not_loading_rebuilds(tmp_path: Path, lenient: None, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    net = Net().eval()
    store = _store(tmp_path)
    _decide(_job(net, [TorchInductorJitBackend()]), store)
    not_shown_pure = _decide(_job(net, [TorchInductorJitBackend()], pure=False), store)
    assert not_shown_pure.cache == "hit" and not_shown_pure.reuse["engine"] == "rebuilt"
    assert isinstance(_bare(not_shown_pure), CompiledEngine)

    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("made by another torch")

    monkeypatch.setattr(TorchInductorJitBackend, "load", broken)
    caplog.set_level(logging.INFO, logger="aitune")
    fallback = _decide(_job(net, [TorchInductorJitBackend()]), store)
    assert fallback.cache == "hit" and fallback.reuse["engine"] == "rebuilt"
    assert "did not load (RuntimeError: made by another torch); compiling it again" in caplog.text
    x = torch.randn(4, 16)
    torch.testing.assert_close(_run(_bare(fallback), x), _run(net, x))


def test_an_engine_that_cannot_be_saved_is_stored_without_it(tmp_path: Path) -> None:
    """Several sizes: the decision is stored, the engine is rebuilt next time."""
    net = Net().eval()
    job = _job(net, [TorchInductorJitBackend()])
    with torch.no_grad():
        other = torch.randn(6, 16)
        job.samples = [*job.samples, Sample((other,), {}, torch.nn.Module._wrapped_call_impl(net, other))]
    assert _decide(job, _store(tmp_path)).cache == "stored"
    assert not list((tmp_path / "cache").rglob(ARTIFACT_FILE))


def test_a_reused_engine_slower_than_recorded_is_retuned(caplog: pytest.LogCaptureFixture) -> None:
    """Slower than recorded both in ms and relative to eager: tuned again. Slower in ms only (a slower machine
    today: eager slowed as much): kept."""
    backend = FakeBackend(latency_ms=5)
    job = _job(Net().eval(), [backend])
    eager = job.eager_latency_ms()
    record = {"decision": "tuned", "backend_index": 0, "backend": backend.describe(),
              "eager_latency_ms": eager, "tuned_latency_ms": 1.0}
    caplog.set_level(logging.INFO, logger="aitune")
    hit = _reuse.Remembered("k" * 64, record)
    with torch.no_grad():
        assert _reuse._reuse(job, hit, [backend], forget=lambda: None) is None
    assert "slower here than when it was tuned" in caplog.text
    record = {**record, "eager_latency_ms": eager / 1000}
    with torch.no_grad():
        kept = _reuse._reuse(_job(Net().eval(), [backend]), _reuse.Remembered("k" * 64, record), [backend],
                             forget=lambda: None)
    assert kept is not None and kept.reuse["kept"] and kept.reuse["latency_ms"] >= 5


def test_reuse_on_a_slower_machine_keeps_the_engine_and_times_eager_only_when_needed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine is 30% slower today as a whole, and the brief timing of eager happened to come out at the
    old speed: the engine looks slower both in ms and relative to eager. Eager and the engine timed in turns
    show the ratio unchanged, so it is kept rather than tuned again (the flake of a shared CI machine). Timing is
    faked at `TuneJob.time` (eager 10 ms, the engine 4 ms when tuned) to make the machine's moods exact."""
    backend = FakeBackend()
    record = {"decision": "tuned", "backend_index": 0, "backend": backend.describe(),
              "eager_latency_ms": 10.0, "tuned_latency_ms": 4.0}
    timings: list[str] = []

    def slower_today(self: TuneJob, fn: Any) -> float:
        timings.append("engine" if isinstance(fn, Engine) else "eager")
        return (4.0 if timings[-1] == "engine" else 10.0) * (1.0 if len(timings) == 2 else 1.3)

    monkeypatch.setattr(TuneJob, "time", slower_today)
    with torch.no_grad():
        kept = _reuse._reuse(_job(Net().eval(), [backend]), _reuse.Remembered("k" * 64, record), [backend],
                             forget=lambda: None)
    assert kept is not None and kept.cache == "hit", kept
    # The engine first (slower in ms), then eager (it came out lucky), then one round of the two in turns.
    assert timings == ["engine", "eager", "eager", "engine"], timings
    assert kept.reuse["kept"] and kept.reuse["confirm_rounds"] == 1, kept.reuse
    assert kept.reuse["latency_ms"] == 5.2 and kept.reuse["ratio_to_eager"] == 0.4, kept.reuse

    # Slower in every round, in ms and against eager: tuned again, after all the rounds.
    timings.clear()
    monkeypatch.setattr(TuneJob, "time", lambda self, fn: (timings.append("t"), 4.5 if isinstance(fn, Engine)
                                                           else 10.0)[1])
    with torch.no_grad():
        assert _reuse._reuse(_job(Net().eval(), [backend]), _reuse.Remembered("k" * 64, record), [backend],
                             forget=lambda: None) is None
    assert len(timings) == 2 + 2 * _reuse.CONFIRM_ROUNDS, timings

    # As fast as recorded: eager is not timed at all (its figure is the recorded one).
    timings.clear()
    monkeypatch.setattr(TuneJob, "time", lambda self, fn: (timings.append("engine" if isinstance(fn, Engine)
                                                                          else "eager"), 4.1)[1])
    with torch.no_grad():
        kept = _reuse._reuse(_job(Net().eval(), [backend]), _reuse.Remembered("k" * 64, record), [backend],
                             forget=lambda: None)
    assert kept is not None and timings == ["engine"], timings
    assert kept.reuse["kept"] and not kept.reuse["eager_timed"] and kept.reuse["eager_latency_ms"] == 10.0
    assert kept.eager_latency_ms == 10.0
