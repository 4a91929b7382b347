"""TorchInductorJitBackend for real (CPU Inductor compiles C++ kernels with gcc here)."""

from __future__ import annotations

import torch

from aitune.torch.backend import TorchInductorJitBackend
from aitune.torch.backend._inductor import entry_point
from aitune.torch.jit import _tracker

from .helpers import tune_net_in_jit_mode


def test_jit_mode_tunes_with_inductor_and_outputs_match() -> None:
    entry, net = tune_net_in_jit_mode(TorchInductorJitBackend())
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


def test_frozen_engine_serves_and_is_dropped_when_weights_change() -> None:
    """Inductor with weight freezing for real: the graph takes the weights as constants (folded, repacked or laid
    out anew where that pays, so a change made in place afterwards may not reach it), so aitune drops the engine
    on a weight change and runs eagerly, as for any engine holding a copy of the weights."""
    backend = TorchInductorJitBackend(freezing=True)
    assert backend.bakes_weights and not TorchInductorJitBackend().bakes_weights
    assert backend.describe() == "TorchInductorJitBackend(freezing=True)"
    entry, net = tune_net_in_jit_mode(backend)
    assert entry["state"] == "tuned" and entry["backend"] == "TorchInductorJitBackend", entry
    sig = _tracker.STATES[id(net)].tuned_signature()
    assert sig is not None and sig.engine is not None and sig.engine.bakes_weights
    x = torch.randn(8, 32)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2)
        got = net(x)
    torch.testing.assert_close(got, torch.nn.Module._wrapped_call_impl(net, x))
    assert sig.engine is None and _tracker.STATES[id(net)].report_state() == "recording"
