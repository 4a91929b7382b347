"""CUDA behaviour of JIT tuning: run on the GPU machine (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from aitune.torch.backend import TorchInductorJitBackend
from aitune.torch.config import config as global_config
from aitune.torch.jit import _report, _tracker, enable_jit_tuning
from aitune.torch.jit.config import config as jit_config

from ..unit.helpers import Net

pytestmark = pytest.mark.gpu


def eager(module: torch.nn.Module, *args: object) -> torch.Tensor:
    return torch.nn.Module._wrapped_call_impl(module, *args)


def test_cuda_graph_engine_keeps_earlier_outputs_intact() -> None:
    jit_config.backends = [TorchInductorJitBackend(mode="reduce-overhead")]
    global_config.min_speedup = 1e-6
    enable_jit_tuning()
    net = Net(width=64).eval().cuda().half()
    xs = [torch.randn(8, 64, device="cuda", dtype=torch.half) for _ in range(6)]
    with torch.no_grad():
        outs = [net(x) for x in xs]  # the last three come from the CUDA-graph engine
        expected = [eager(net, x) for x in xs]
    assert _tracker.STATES[id(net)].report_state() == "tuned"
    for out, exp in zip(outs, expected):
        torch.testing.assert_close(out, exp, rtol=1e-2, atol=1e-2)
    assert len({o.data_ptr() for o in outs}) == len(outs)


def test_default_candidates_on_cuda_include_cuda_graphs_and_moving_to_cpu_runs_eagerly() -> None:
    global_config.min_speedup = 1e-6
    enable_jit_tuning()
    net = Net(width=64).eval().cuda()
    x = torch.randn(8, 64, device="cuda")
    with torch.no_grad():
        for _ in range(4):
            net(x)
        entry = {m["name"]: m for m in _report.build_report()["modules"]}["Net"]
        assert {"TorchInductorJitBackend", "TorchInductorJitBackend(mode='reduce-overhead')"} <= {
            c["backend"] for c in entry["candidates"]}
        net.cpu()
        out = net(x.cpu())
    torch.testing.assert_close(out, eager(net, x.cpu()))
    assert out.device.type == "cpu"
