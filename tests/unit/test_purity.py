"""Only pure calls go to engines that run no Python: what a forward reads from globals and attributes, what it
changes in Python objects, and weight writes through `.data` that no version counter sees."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import aitune.torch as ait
from aitune.torch._samples import Sample
from aitune.torch._signature import _decide, _purity, _weights
from aitune.torch.backend import ONNXRuntimeBackend, TorchInductorJitBackend
from aitune.torch.tune_strategy import HighestThroughputStrategy, OneBackendStrategy

from .helpers import only_signature, record

pytestmark = pytest.mark.usefixtures("fast_tuning")

SCALE = {"factor": 1.0}  # a global of the script's own code
SEEN: list[int] = []


class Tempered(torch.nn.Module):
    """Reads a plain attribute of itself and one of an object it holds."""

    class Settings:
        def __init__(self) -> None:
            self.shift = 0.0

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)
        self.temperature = 1.0
        self.settings = Tempered.Settings()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) / self.temperature + self.settings.shift


class ReadsGlobal(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * SCALE["factor"] + math.pi  # math.pi belongs to the standard library: a constant


class Appends(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        SEEN.append(x.shape[0])
        return self.fc(x)


class AppendsToArgument(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, log: list[float]) -> torch.Tensor:
        log.append(1.0)
        return self.fc(x)


def _sample(*args: Any) -> Sample:
    return Sample(args, {}, None)


def test_a_pure_forward_is_pure_and_its_plain_attributes_are_watched() -> None:
    net = Tempered().eval()
    with torch.no_grad():
        verdict = _purity.probe(net, ("k",), _sample(torch.randn(2, 8)))
    assert verdict.impure is None and verdict.outside is None
    watched = {item.describe() for item in verdict.watch.items}
    assert {"temperature", "settings.shift"} <= watched, watched
    assert verdict.watch.changed(net) is None
    net.settings.shift = 0.5
    assert verdict.watch.changed(net) == "settings.shift changed (0.0 -> 0.5)"
    net.settings.shift = 0.0
    net.temperature = 0.25
    assert verdict.watch.changed(net) == "temperature changed (1.0 -> 0.25)"
    # An identical module reuses the verdict, with its own values.
    other = Tempered().eval()
    again = _purity.probe(other, ("k",), _sample(torch.randn(2, 8)))
    assert again.watch.changed(other) is None and again.watch.changed(net) is not None


def test_a_global_of_the_scripts_code_makes_a_call_impure_but_a_library_constant_does_not() -> None:
    with torch.no_grad():
        verdict = _purity.probe(ReadsGlobal().eval(), ("k",), _sample(torch.randn(2, 8)))
    assert verdict.impure is not None and "SCALE['factor']" in verdict.impure, verdict.impure
    assert "math" not in verdict.impure


def test_side_effects_are_found_without_being_made() -> None:
    SEEN.clear()
    with torch.no_grad():
        verdict = _purity.probe(Appends().eval(), ("k",), _sample(torch.randn(2, 8)))
    assert SEEN == [], "the trace must not replay the forward's side effects on the script's objects"
    assert verdict.outside is not None and "SEEN" in verdict.outside, verdict
    log: list[float] = []
    with torch.no_grad():
        verdict = _purity.probe(AppendsToArgument().eval(), ("k",), _sample(torch.randn(2, 8), log))
    assert log == [] and verdict.outside is None
    assert verdict.impure is not None and "args" in verdict.impure, verdict.impure


def test_restrict_keeps_exported_engines_for_pure_calls_only() -> None:
    plan = _decide.Plan(HighestThroughputStrategy(), [ONNXRuntimeBackend(), TorchInductorJitBackend()])
    net = ReadsGlobal().eval()
    sig, samples = record(net, [((torch.randn(2, 8),), {}) for _ in range(2)])
    narrowed = _decide.restrict(plan, net, sig, samples, "net")
    assert [b.name for b in narrowed.backends] == ["TorchInductorJitBackend"]
    pure = Tempered().eval()
    sig, samples = record(pure, [((torch.randn(2, 8),), {}) for _ in range(2)])
    kept = _decide.restrict(plan, pure, sig, samples, "pure")
    assert kept.backends == plan.backends and kept.watch
    SEEN.clear()
    appends = Appends().eval()
    sig, samples = record(appends, [((torch.randn(2, 8),), {}) for _ in range(2)])
    SEEN.clear()
    none = _decide.restrict(plan, appends, sig, samples, "appends")
    assert none.backends == [] and "other than its arguments" in (none.why_none or "") and SEEN == []


def test_an_attribute_changed_after_tuning_drops_the_exported_engine() -> None:
    net = Tempered().eval()
    m = ait.Module(net, "tempered", strategy=OneBackendStrategy(ONNXRuntimeBackend()))
    ait.tune(m, [torch.randn(4, 8) for _ in range(3)])
    sig = only_signature(m)
    assert sig.status == "tuned" and sig.watch, sig.reason
    x = torch.randn(4, 8)
    with torch.no_grad():
        m(x)
        calls = sig.engine_calls
        net.temperature = 0.25
        got = m(x)
        want = net.forward(x)
    torch.testing.assert_close(got, want)
    assert sig.engine_calls == calls and sig.status == "recording" and sig.watch is None
    # A value that keeps changing: after the second time only engines that run Python are tried.
    ait.tune(m, [torch.randn(4, 8) for _ in range(3)])
    assert sig.status == "tuned"
    net.temperature = 0.5
    with torch.no_grad():
        torch.testing.assert_close(m(x), net.forward(x))
    assert sig.python_only is not None and "temperature" in sig.python_only
    ait.tune(m, [torch.randn(4, 8) for _ in range(3)])
    assert sig.status == "eager" and "keep changing" in (sig.reason or ""), sig.reason


def test_weights_written_through_data_drop_an_engine_holding_a_copy() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU()).eval()
    other = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU()).eval()
    m = ait.Module(net, "ema", strategy=OneBackendStrategy(ONNXRuntimeBackend()))
    ait.tune(m, [torch.randn(4, 8) for _ in range(3)])
    sig = only_signature(m)
    assert sig.status == "tuned", sig.reason
    x = torch.randn(4, 8)
    with torch.no_grad():
        m(x)
        versions = [p._version for p in net.parameters()]
        for p, q in zip(net.parameters(), other.parameters()):
            p.data.copy_(q)  # the EMA / weight-loading idiom: no version counter moves
        assert [p._version for p in net.parameters()] == versions
        got = m(x)
        want = other(x)
    torch.testing.assert_close(got, want)
    assert sig.engine is None


def test_the_weights_baseline_costs_nothing_until_data_is_touched() -> None:
    net = torch.nn.Linear(64, 64)
    baseline = _weights.Baseline(net)
    assert not baseline.changed(net)
    with torch.no_grad():
        net.weight.mul_(1.0)  # through the tensor itself: versions see it, the baseline need not
    assert baseline.accesses == _weights.DATA_ACCESSES.value and not baseline.changed(net)
    net.weight.data.norm()  # a read: the next look samples, finds nothing changed
    assert not baseline.changed(net)
    net.weight.data[0, 0] += 1.0  # element 0 is always sampled
    assert baseline.changed(net)
    assert not baseline.changed(net)
    net.bias.data = torch.zeros(64)
    assert baseline.changed(net)


def test_a_loaded_exported_engine_watches_what_it_baked_in(tmp_path: Any) -> None:
    net = Tempered().eval()
    m = ait.Module(net, "tempered", strategy=OneBackendStrategy(ONNXRuntimeBackend()))
    ait.tune(m, [torch.randn(4, 8) for _ in range(3)])
    ckpt = ait.save(m, tmp_path / "t.ait")
    fresh = Tempered().eval()
    fresh.load_state_dict(net.state_dict())
    loaded = ait.load(fresh, ckpt)
    sig = only_signature(loaded)
    assert sig.watch and "temperature" in {w.describe() for w in sig.watch.items}
    x = torch.randn(4, 8)
    fresh.temperature = 0.5
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), fresh.forward(x))
    assert sig.engine is None


def test_signatures_per_module_stay_bounded() -> None:
    from aitune.torch.config import config as global_config
    from aitune.torch.jit import _report, enable_jit_tuning
    from aitune.torch.jit.config import config as jit_settings

    global_config.max_signatures = 8
    jit_settings.backends = [TorchInductorJitBackend()]
    enable_jit_tuning()
    net, stats = AppendsToArgument().eval(), []
    with torch.no_grad():
        for _ in range(40):  # the list grows: every call is a new signature
            x = torch.randn(2, 8)
            torch.testing.assert_close(net(x, stats), net.fc(x))
    assert len(stats) == 40
    entry = {m["name"]: m for m in _report.build_report()["modules"]}["AppendsToArgument"]
    assert len(entry["signatures"]) == 9, len(entry["signatures"])  # 8, and the one that counts the rest
    overflow = entry["signatures"][-1]
    assert overflow["status"] == "eager" and "max_signatures" in overflow["reason"] and overflow["calls"] == 32


_USER_CODE = """
import torch


def act(x):
    return torch.relu(x)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)
        self.temperature = 1.0

    def forward(self, x):
        return act(self.fc(x)) / self.temperature
"""


def test_a_pure_verdict_persists_and_holds_only_while_its_code_and_values_do(tmp_path: Any,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """What the persistent cache keeps of a verdict (`persisted`) comes back (`from_record`) only while every
    function of the user's code that was traced reads as it did (here a helper the forward calls, which the
    module's structure digest does not cover) and every watched value is the same."""
    import importlib.util
    import json
    import linecache
    import sys

    path = tmp_path / "aitune_user_code_probe.py"
    path.write_text(_USER_CODE)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    user = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, path.stem, user)
    spec.loader.exec_module(user)
    net = user.Net().eval()
    with torch.no_grad():
        verdict = _purity.probe(net, ("persist",), _sample(torch.randn(2, 8)))
    assert verdict.impure is None and verdict.sources is not None
    assert {src[0] for src in verdict.sources} == {path.stem}, verdict.sources
    assert len(verdict.sources) == 2  # the forward and the helper it calls
    record = json.loads(json.dumps(_purity.persisted(verdict)))  # as the cache entry holds it

    back = _purity.from_record(record, net)
    assert back is not None and back.impure is None and back.sources == verdict.sources
    assert back.watch.changed(net) is None
    assert "temperature" in {item.describe() for item in back.watch.items}

    net.temperature = 2.0  # a value the engine would have baked in differs: trace again
    assert _purity.from_record(record, net) is None
    net.temperature = 1.0
    assert _purity.from_record(record, net) is not None

    path.write_text(_USER_CODE.replace("return torch.relu(x)", "return torch.relu(x) * 2"))  # the helper changed
    linecache.checkcache(str(path))
    assert _purity.from_record(record, net) is None
    assert _purity.from_record({"sources": "not a list"}, net) is None

    with torch.no_grad():
        impure = _purity.probe(Appends().eval(), ("persist",), _sample(torch.randn(2, 8)))
    assert impure.impure is not None and _purity.persisted(impure) is None
