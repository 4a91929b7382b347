"""The explicit API and its checkpoint on CUDA: run on the GPU machine (skipped without a GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import aitune.torch as ait
from aitune.torch import cache
from aitune.torch._explicit._module import runtime_of
from aitune.torch._signature._decide import make_job, run
from aitune.torch.backend import TorchInductorJitBackend
from aitune.torch.config import config as global_config
from aitune.torch.tune_strategy import OneBackendStrategy

from ..unit.helpers import Net, record

pytestmark = pytest.mark.gpu


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return Net(width=64).eval().cuda().half()


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_tune_save_load_round_trip_on_cuda(tmp_path: Path, mode: str | None) -> None:
    global_config.min_speedup = 1e-6
    backend = TorchInductorJitBackend(mode=mode)
    model = ait.Module(_net(), "net", strategy=OneBackendStrategy(backend))
    data = [torch.randn(8, 64, device="cuda", dtype=torch.half) for _ in range(3)]
    ait.tune(model, data)
    assert runtime_of(model).state == "tuned"
    ait.save(model, tmp_path / "net.ait")

    fresh = _net()
    loaded = ait.load(fresh, tmp_path / "net.ait")
    x = torch.randn(8, 64, device="cuda", dtype=torch.half)
    with torch.no_grad():
        outs = [loaded(x) for _ in range(3)]
        expected = torch.nn.Module._wrapped_call_impl(fresh, x)
    for out in outs:
        torch.testing.assert_close(out, expected, rtol=1e-2, atol=1e-2)
    [sig] = runtime_of(loaded).signatures.values()
    assert sig.status == "tuned" and sig.engine_calls == 3 and sig.backend == "TorchInductorJitBackend"


def test_cache_round_trip_of_a_cuda_decision(tmp_path: Path) -> None:
    """The shared tuning step stores a CUDA decision and a second lookup reuses it after checking it."""
    global_config.min_speedup = 1e-6
    net = _net()
    x = torch.randn(8, 64, device="cuda", dtype=torch.half)
    store = cache.open_store(tmp_path / "c", create=True, need_secret=True)
    outcomes = []
    for _ in range(2):
        sig, samples = record(net, [((x,), {})] * 3)
        job = make_job(net, "Net", sig, samples, torch.device("cuda"), [TorchInductorJitBackend()])
        outcomes.append(run(job, OneBackendStrategy(TorchInductorJitBackend()), store))
    assert outcomes[0].cache == "stored" and outcomes[1].cache == "hit"
    assert outcomes[1].winner is not None and outcomes[1].winner.ok
    [entry] = cache.entries(tmp_path / "c", verify=True)
    assert entry.valid and "cuda" in str(entry.path.joinpath("entry.json").read_text())
