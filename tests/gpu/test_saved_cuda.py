"""Saved torch.compile engines on CUDA: a reduce-overhead winner is loaded in a later process without compiling
and replays a CUDA graph that aitune captured itself (run on the GPU machine; skipped without a GPU)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from aitune.torch.backend import TorchInductorJitBackend
from aitune.torch.backend._graphs import CapturedGraph

from ..unit.helpers import Net
from ..unit.test_saved_compile import _bare, _decide, _job, _store

pytestmark = pytest.mark.gpu

@pytest.fixture
def lenient(monkeypatch: pytest.MonkeyPatch) -> None:
    from aitune.torch.config import config as global_config

    monkeypatch.setattr(global_config, "reuse_max_slowdown", float("inf"))


def test_reduce_overhead_engine_loads_as_an_aitune_cuda_graph(tmp_path: Path, lenient: None,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    net = Net(width=64).eval().cuda().half()
    x = torch.randn(8, 64, device="cuda", dtype=torch.half)
    store = _store(tmp_path)
    first = _decide(_job(net, [TorchInductorJitBackend(mode="reduce-overhead")], x=x), store)
    assert first.cache == "stored"

    def no_build(*_: Any, **__: Any) -> None:
        raise AssertionError("the saved engine should load, not compile")

    monkeypatch.setattr(TorchInductorJitBackend, "build", no_build)
    torch._dynamo.reset()
    second = _decide(_job(net, [TorchInductorJitBackend(mode="reduce-overhead")], x=x), store)
    assert second.cache == "hit" and second.reuse["engine"] == "loaded", second
    engine = _bare(second)
    assert isinstance(engine, CapturedGraph) and engine.runs_no_python
    xs = [torch.randn(8, 64, device="cuda", dtype=torch.half) for _ in range(4)]
    with torch.no_grad():
        outs = [engine(v) for v in xs]
        for v, out in zip(xs, outs):  # every output is the caller's own: a later replay leaves it as it was
            torch.testing.assert_close(out, net(v), rtol=1e-2, atol=1e-2)
        # In-place weight writes are read where the graph reads them.
        net.head.weight.mul_(2)
        torch.testing.assert_close(engine(xs[0]), net(xs[0]), rtol=1e-2, atol=1e-2)
        with pytest.raises(ValueError, match="captured with"):
            engine(torch.randn(4, 64, device="cuda", dtype=torch.half))


def test_a_graph_captured_in_a_worker_thread_matches_eager() -> None:
    """Capture uses the thread-local mode: a thread other than the main one captures and replays correctly."""
    net = Net(width=64).eval().cuda()
    x = torch.randn(8, 64, device="cuda")
    box: dict[str, Any] = {}

    def capture() -> None:
        with torch.no_grad():
            box["graph"] = CapturedGraph(lambda t: net(t), (x,), {}, x.device)
            box["out"] = box["graph"](x)

    t = threading.Thread(target=capture)
    t.start()
    t.join()
    with torch.no_grad():
        torch.testing.assert_close(box["out"], net(x))


def test_jit_cuda_graph_engine_follows_in_place_writes_and_is_dropped_when_weights_move() -> None:
    """JIT mode, reduce-overhead over a pure call at one size: the candidate is aitune's own CUDA graph around
    the whole-graph compile. It reads in-place weight writes where they are; a weight moved to new memory through
    `.data` (which the graph would not see) drops it."""
    from aitune.torch.config import config as global_config
    from aitune.torch.jit import _tracker, enable_jit_tuning
    from aitune.torch.jit.config import config as jit_config

    jit_config.backends = [TorchInductorJitBackend(mode="reduce-overhead")]
    global_config.min_speedup = 1e-6
    global_config.inplace_check_calls = 0
    enable_jit_tuning()
    net = Net(width=64).eval().cuda()
    x = torch.randn(8, 64, device="cuda")
    with torch.no_grad():
        for _ in range(4):
            net(x)
        sig = next(iter(_tracker.STATES[id(net)].signatures.values()))
        assert sig.status == "tuned" and isinstance(sig.engine, CapturedGraph), sig.engine
        net.head.weight.mul_(3)
        torch.testing.assert_close(net(x), torch.nn.Module._wrapped_call_impl(net, x))
        assert sig.status == "tuned"
        net.head.weight.data = torch.randn_like(net.head.weight)
        torch.testing.assert_close(net(x), torch.nn.Module._wrapped_call_impl(net, x))
        assert sig.engine is None or not isinstance(sig.engine, CapturedGraph) or sig.status != "tuned"
