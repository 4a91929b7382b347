"""An engine that compiles sizes symbolically serves sizes beyond its checked range along the dimensions that
varied, once the first of them have matched eager on live calls (`_signature._route.run_confirming_size`); a
mismatch closes it to new sizes, and nothing else is opened."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

import aitune.torch as ait
from aitune.torch.config import config as global_config
from aitune.torch.tune_strategy import OneBackendStrategy

from .helpers import FakeBackend, Net, only_signature


@pytest.fixture(autouse=True)
def _two_confirmations(fast_tuning: None) -> None:
    global_config.confirm_calls = 2
    FakeBackend.calls.clear()


def tuned(**options: Any) -> tuple[Any, torch.nn.Module, Any]:
    net = Net().eval()
    m = ait.Module(net, "net", strategy=OneBackendStrategy(FakeBackend(**options)))
    ait.tune(m, [torch.randn(n, 3, 16) for n in (4, 5, 6)])
    sig = only_signature(m)
    assert sig.status == "tuned"
    return m, net, sig


def test_new_sizes_along_a_varying_dimension_are_confirmed_then_served(caplog: pytest.LogCaptureFixture) -> None:
    m, net, sig = tuned(new_sizes=True)
    assert sig.open_dims == [[0]] and sig.engine_range == ([[4, 3, 16]], [[6, 3, 16]])
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="aitune"):
        for n in (7, 8):  # confirmed: eager serves, the engine runs on copies
            x = torch.randn(n, 3, 16)
            before = len(FakeBackend.calls)
            torch.testing.assert_close(m(x), net(x))
            assert len(FakeBackend.calls) == before + 1 and sig.engine_calls == 0
        assert "serves new sizes along x dim 0 from now on" in caplog.text
        x = torch.randn(11, 3, 16)
        torch.testing.assert_close(m(x), net(x))
        assert sig.engine_calls == 1 and sig.engine_range == ([[4, 3, 16]], [[11, 3, 16]])
        assert sig.out_of_range_calls == 0
        # A dimension that never varied, and size 1 (which compilers specialise), stay outside: eager serves.
        for x in (torch.randn(5, 4, 16), torch.randn(1, 3, 16)):
            torch.testing.assert_close(m(x), net(x))
        assert sig.engine_calls == 1 and sig.out_of_range_calls == 2


def test_a_mismatch_at_a_new_size_keeps_the_engine_to_its_checked_range(caplog: pytest.LogCaptureFixture) -> None:
    m, net, sig = tuned(new_sizes=True, error_above=6)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="aitune"):
        x = torch.randn(7, 3, 16)
        torch.testing.assert_close(m(x), net(x))  # eager's result, though the engine was wrong
        assert "serves only the sizes it was tuned on" in caplog.text and sig.open_dims is None
        y = torch.randn(8, 3, 16)
        torch.testing.assert_close(m(y), net(y))
        assert sig.out_of_range_calls == 1 and sig.engine_calls == 0
        z = torch.randn(5, 3, 16)
        torch.testing.assert_close(m(z), net(z))
        assert sig.engine_calls == 1 and sig.status == "tuned"


def test_backends_with_fixed_sizes_open_nothing() -> None:
    m, net, sig = tuned()
    assert sig.open_dims is None
    with torch.no_grad():
        x = torch.randn(9, 3, 16)
        torch.testing.assert_close(m(x), net(x))
    assert sig.out_of_range_calls == 1 and sig.engine_calls == 0



class Decoder(torch.nn.Module):
    """Keyword inputs of different ranks, as transformers models take them."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        assert mask is not None and positions is not None
        return self.fc(ids) * mask.sum() + positions.float().mean()


def test_the_engine_range_follows_the_signature_order_whatever_order_keywords_come_in() -> None:
    net = Decoder().eval()
    m = ait.Module(net, "dec", strategy=OneBackendStrategy(FakeBackend(new_sizes=True)))

    def call(n: int) -> dict[str, Any]:
        # Keywords in another order than the forward's parameters; the mask grows as a sequence would.
        return {"positions": torch.tensor([[n]]), "mask": torch.ones(1, 1, 1, n), "ids": torch.randn(1, 1, 4)}

    ait.tune(m, [call(n) for n in (5, 6, 7)])
    sig = only_signature(m)
    assert [d["name"] for d in sig.description] == ["ids", "mask", "positions"]
    assert sig.engine_range == ([[1, 1, 4], [1, 1, 1, 5], [1, 1]], [[1, 1, 4], [1, 1, 1, 7], [1, 1]])
    with torch.no_grad():
        kwargs = call(6)
        torch.testing.assert_close(m(**kwargs), net(**kwargs))
        assert sig.engine_calls == 1 and sig.out_of_range_calls == 0
        for n in range(8, 14):  # two confirmed, then served
            kwargs = call(n)
            torch.testing.assert_close(m(**kwargs), net(**kwargs))
    assert sig.engine_calls == 5 and sig.out_of_range_calls == 0 and sig.engine_range[1][1] == [1, 1, 1, 13]
