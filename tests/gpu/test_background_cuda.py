"""Background tuning on CUDA (run on the GPU machine; skipped without a GPU): the worker compiles and checks a
whole-graph engine while the script calls; the CUDA graph around it is captured on the script's own calls after
the switch (`GraphAtSwitch`), compared with the engine, and kept only where it is faster in place. Every answer,
before, during and after the switch, from the main thread and a second one, is the plain model's."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

import aitune.torch as ait
from aitune.torch.backend import TorchInductorJitBackend
from aitune.torch.backend._graphs import GraphAtSwitch
from aitune.torch.config import config

from ..unit.helpers import Net

pytestmark = pytest.mark.gpu


def test_background_tuning_captures_the_graph_on_the_serving_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "min_speedup", 1e-6)
    monkeypatch.setattr(config, "inplace_check_calls", 0)  # the graph's own steps, not the engine's check
    torch.manual_seed(0)
    net = Net(width=256).eval().cuda().half()
    plain = copy.deepcopy(net)
    wrapped = ait.Module(net, "net", strategy=ait.OneBackendStrategy(TorchInductorJitBackend()))
    x = torch.randn(8, 256, device="cuda", dtype=torch.half)
    ait.tune(wrapped, [x, x, x], background=True)
    assert wrapped.aitune_runtime.state == "tuning"
    worst = [0.0]
    stop = threading.Event()

    def check(model_in: torch.Tensor) -> None:
        with torch.no_grad():
            got, want = wrapped(model_in), plain(model_in)
        worst[0] = max(worst[0], float((got.float() - want.float()).abs().max()))

    def other_thread() -> None:
        gen = torch.Generator(device="cuda").manual_seed(1)
        while not stop.is_set():
            check(torch.randn(8, 256, device="cuda", dtype=torch.half, generator=gen))

    during = 0
    while not ait.wait(timeout=0):
        check(torch.randn(8, 256, device="cuda", dtype=torch.half))
        during += 1
    sig = next(iter(wrapped.aitune_runtime.signatures.values()))
    assert during > 0
    assert sig.status == "tuned", sig.reason
    engine = sig.engine
    assert isinstance(engine, GraphAtSwitch), type(engine)
    for _ in range(200):  # this thread alone: warm-up, capture, compare, then the timed turns
        check(torch.randn(8, 256, device="cuda", dtype=torch.half))
        if engine.stage in ("graph", "engine"):
            break
    assert engine.capture_ms is not None, engine.graph_report()
    assert engine.stage == "graph" or (engine.stage == "engine" and "not faster" in str(engine.why)), \
        engine.graph_report()
    assert sig.to_report()["graphs"]["stage"] == engine.stage
    # A second thread from now on: its calls run the engine inside, this thread's keep their route.
    helper = threading.Thread(target=other_thread)
    helper.start()
    try:
        for _ in range(50):
            check(torch.randn(8, 256, device="cuda", dtype=torch.half))
    finally:
        stop.set()
        helper.join()
    assert worst[0] < 1e-2, worst[0]
