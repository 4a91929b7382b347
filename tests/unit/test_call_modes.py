"""What changes a computation besides its inputs is part of a signature (autocast, deterministic algorithms), and
aitune's own runs leave the script's random number generators where they were."""

from __future__ import annotations

import pytest
import torch

import aitune.torch as ait
from aitune.torch._explicit._module import runtime_of
from aitune.torch._samples import call_modes, recorded_modes
from aitune.torch._signature._rng import rng_kept
from aitune.torch.backend import TorchEagerBackend
from aitune.torch.tune_strategy import OneBackendStrategy

from .helpers import FakeBackend, Net, only_signature

pytestmark = pytest.mark.usefixtures("fast_tuning")


def test_call_modes_name_autocast_per_device_type_and_determinism() -> None:
    assert call_modes() == ((), False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert call_modes() == ((("cpu", "bfloat16"),), False)
    with recorded_modes(((("cpu", "float16"),), True)):
        assert call_modes() == ((("cpu", "float16"),), True)
        assert torch.get_autocast_dtype("cpu") == torch.float16
    assert call_modes() == ((), False) and not torch.are_deterministic_algorithms_enabled()


def test_a_call_under_autocast_is_not_served_by_an_engine_tuned_without_it() -> None:
    net = Net().eval()
    m = ait.Module(net, "net", strategy=OneBackendStrategy(FakeBackend()))
    ait.tune(m, [torch.randn(4, 16) for _ in range(3)])
    tuned = only_signature(m)
    x = torch.randn(4, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = m(x)
        want = net(x)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    rt = runtime_of(m)
    assert tuned.engine_calls == 0 and rt is not None and len(rt.signatures) == 2
    with torch.no_grad():
        torch.testing.assert_close(m(x), net(x))
    assert tuned.engine_calls == 1


class Noisy(torch.nn.Module):
    """Draws from the global generator on every call (its outputs do not depend on the draw)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + 0.0 * torch.rand_like(x)


def test_tuning_leaves_the_global_generator_where_the_script_left_it() -> None:
    data = [torch.randn(2, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    net = Noisy().eval()
    m = ait.Module(net, "noisy", strategy=OneBackendStrategy(TorchEagerBackend()))
    torch.manual_seed(0)
    ait.tune(m, data)  # three recorded calls (each draws once, as without aitune), then tuning's many runs
    after = torch.rand(4)
    assert only_signature(m).status == "tuned"
    torch.manual_seed(0)
    with torch.no_grad():
        for x in data:
            net(x)
    assert torch.equal(after, torch.rand(4))


def test_rng_kept_restores_the_cpu_generator() -> None:
    torch.manual_seed(3)
    with rng_kept():
        torch.rand(100)
    kept = torch.rand(2)
    torch.manual_seed(3)
    assert torch.equal(kept, torch.rand(2))
