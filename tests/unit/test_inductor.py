"""TorchInductorJitBackend for real (CPU Inductor compiles C++ kernels with gcc here)."""

from __future__ import annotations

import torch

from aitune.torch.backend import TorchInductorJitBackend
from aitune.torch.backend._inductor import entry_point
from aitune.torch.config import config as global_config
from aitune.torch.jit import _report, _tracker, enable_jit_tuning
from aitune.torch.jit.config import config as jit_config

from .helpers import Net


def test_jit_mode_tunes_with_inductor_and_outputs_match() -> None:
    jit_config.backends = [TorchInductorJitBackend()]
    jit_config.min_samples = 2
    global_config.min_speedup = 1e-6  # CPU timings of a tiny model are noise; the test is about the pipeline
    enable_jit_tuning()
    net = Net(width=32).eval()
    xs = [torch.randn(8, 32) for _ in range(4)]
    with torch.no_grad():
        outs = [net(x) for x in xs]
        expected = [torch.nn.Module._wrapped_call_impl(net, x) for x in xs]
    for out, exp in zip(outs, expected):
        torch.testing.assert_close(out, exp, rtol=1e-4, atol=1e-5)
    entry = {m["name"]: m for m in _report.build_report()["modules"]}["Net"]
    assert entry["state"] == "tuned" and entry["backend"] == "TorchInductorJitBackend"
    assert entry["candidates"][0]["ok"] and entry["candidates"][0]["latency_ms"] > 0
    sig = _tracker.STATES[id(net)].tuned_signature()
    assert sig is not None and sig.engine_calls == 2
    # The compiled engine does not keep the module alive.
    import gc
    import weakref

    ref = weakref.ref(net)
    del net, sig
    gc.collect()
    assert ref() is None


def test_each_engine_has_its_own_code_object() -> None:
    """Twelve modules compiled one after the other must not hit Dynamo's recompile limit (8)."""
    from torch._dynamo.utils import counters

    counters.clear()
    for i in range(12):
        m = torch.nn.Sequential(torch.nn.Linear(4 + i, 4), torch.nn.ReLU())
        torch.compile(entry_point(m), backend="eager")(m, torch.randn(2, 4 + i))
    assert counters["stats"]["unique_graphs"] == 12
    assert not counters["unimplemented"]


def test_config_validation() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="either `mode` or `options`"):
        TorchInductorJitBackend(mode="max-autotune", options={"triton.cudagraphs": True})
    with pytest.raises(ValidationError):
        TorchInductorJitBackend(mode="fastest")
    assert TorchInductorJitBackend(mode="reduce-overhead").describe() == \
        "TorchInductorJitBackend(mode='reduce-overhead')"
