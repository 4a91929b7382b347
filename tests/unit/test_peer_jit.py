"""NVIDIA AITune's documented JIT settings and entry points, with their meaning here: `patch_exclude`, `device`,
`dry_run`, `detect_graph_breaks`, `prepare_for_jit_tuning` / `patch_for_jit_tuning`, `print_hierarchy`."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch

import aitune.torch as ait
from aitune.torch._errors import ConfigError
from aitune.torch.backend import TorchEagerBackend
from aitune.torch.jit import _report, is_enabled, print_hierarchy
from aitune.torch.jit.config import config as jit_config

from .helpers import Net

pytestmark = pytest.mark.usefixtures("fast_tuning")


class Breaks(torch.nn.Module):
    """A forward Dynamo cannot trace as one graph (a print between two layers)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(16, 16)
        self.second = torch.nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.first(x)
        torch._dynamo.graph_break()
        return self.second(y)


def _run(model: torch.nn.Module, calls: int = 4) -> dict[str, dict[str, Any]]:
    ait.jit_config.backends = [TorchEagerBackend()]
    ait.jit_config.min_samples = 2
    with ait.prepare_for_jit_tuning():
        with torch.no_grad():
            for _ in range(calls):
                x = torch.randn(4, 16)
                torch.testing.assert_close(model(x), torch.nn.Module._wrapped_call_impl(model, x))
    return {m["name"]: m for m in _report.build_report()["modules"]}


def test_prepare_for_jit_tuning_turns_tuning_on_and_leaves_it_on() -> None:
    assert not is_enabled()
    report = _run(Net().eval())
    assert is_enabled() and report["Net"]["state"] == "tuned"

    @ait.patch_for_jit_tuning
    def run() -> str:
        return "ran"

    assert run() == "ran" and is_enabled()
    out = io.StringIO()
    print_hierarchy(out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("Net [Net] tuned TorchEagerBackend"), lines


def test_patch_exclude_takes_packages_and_qualified_class_names() -> None:
    jit_config.patch_exclude = [f"{Net.__module__}.{Net.__qualname__}"]
    report = _run(Net().eval())
    assert "Net" not in report, report.keys()  # not tracked at all: its blocks are the top modules now
    assert any(name.startswith("Block") for name in report), report.keys()


def test_device_tunes_only_calls_on_that_device() -> None:
    jit_config.device = "cuda"
    report = _run(Net().eval())
    assert report["Net"]["state"] != "tuned" and "jit_config.device is cuda" in report["Net"]["reason"], report
    with pytest.raises(ConfigError, match="device"):
        jit_config.device = "tpu-ish"


def test_dry_run_says_what_would_be_tried_and_builds_nothing() -> None:
    jit_config.dry_run = True
    report = _run(Net().eval())
    entry = report["Net"]
    assert entry["state"] == "eager" and entry["reason"].startswith("dry run: would try TorchEagerBackend"), entry
    assert entry["signatures"][0]["engine_calls"] == 0 and not entry["candidates"]


def test_detect_graph_breaks_sends_a_breaking_module_to_its_children() -> None:
    jit_config.detect_graph_breaks = True
    report = _run(Breaks().eval(), calls=6)
    entry = report["Breaks"]
    assert entry["state"] == "eager" and "breaks into several graphs" in entry["reason"], entry
    assert report["Breaks.first"]["state"] == "tuned", report.keys()


def test_without_the_check_a_breaking_module_is_tuned_whole() -> None:
    assert _run(Breaks().eval())["Breaks"]["state"] == "tuned"


def test_batch_axis_required_waits_for_a_second_size_and_covers_both() -> None:
    jit_config.batch_axis_required = True
    ait.jit_config.backends = [TorchEagerBackend()]
    ait.jit_config.min_samples = 2
    net = Net().eval()
    with ait.prepare_for_jit_tuning(), torch.no_grad():
        for _ in range(5):
            net(torch.randn(4, 16))
        assert {m["name"]: m for m in _report.build_report()["modules"]}["Net"]["state"] == "recording"
        for batch in (8, 4, 8):
            x = torch.randn(batch, 16)
            torch.testing.assert_close(net(x), torch.nn.Module._wrapped_call_impl(net, x))
    entry = {m["name"]: m for m in _report.build_report()["modules"]}["Net"]
    assert entry["state"] == "tuned", entry
    sig = entry["signatures"][0]
    assert sig["inputs"][0]["engine_min_shape"][0] == 4 and sig["inputs"][0]["engine_max_shape"][0] == 8, sig
