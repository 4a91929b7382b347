"""Discovery, recording, routing, invalidation and fail-open behaviour of the call path."""

from __future__ import annotations

import logging
import threading

import pytest
import torch

from aitune.torch import _samples
from aitune.torch._errors import TuningError
from aitune.torch._signature import _record
from aitune.torch.config import config as global_config
from aitune.torch.jit import _report, _tracker, enable_jit_tuning
from aitune.torch.jit.config import config as jit_config

from .helpers import FakeBackend, Net


def state(module: torch.nn.Module) -> _tracker.ModuleState:
    return _tracker.STATES[id(module)]


def eager(module: torch.nn.Module, *args: object, **kwargs: object) -> torch.Tensor:
    return torch.nn.Module._wrapped_call_impl(module, *args, **kwargs)


def tuned_net() -> tuple[Net, torch.Tensor]:
    """Enable JIT mode and call a fresh Net until it is tuned (the `fake` fixture sets min_samples=2)."""
    enable_jit_tuning()
    net = Net().eval()
    x = torch.randn(4, 16)
    with torch.no_grad():
        net(x)
        net(x)
    assert state(net).report_state() == "tuned"
    return net, x


def test_top_module_is_tuned_and_routed(fake_backend: None) -> None:
    enable_jit_tuning()
    net = Net().eval()
    x = torch.randn(4, 16)
    with torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(net(x), eager(net, x))
        assert state(net).report_state() == "tuned"
        FakeBackend.calls.clear()
        torch.testing.assert_close(net(x + 1), eager(net, x + 1))
    assert FakeBackend.calls == ["Net"]
    # Children are inside the engine now.
    assert {s.status for s in state(net).descendants()} == {"detached"}
    names = sorted(s.name for s in _tracker.tracked_states())
    assert "Net.blocks.0" in names and "Net.blocks.0.fc" in names and "Net.head" in names


def test_positional_and_keyword_calls_share_a_signature(fake_backend: None) -> None:
    enable_jit_tuning()
    jit_config.min_samples = 3
    net = Net().eval()
    x = torch.randn(4, 16)
    with torch.no_grad():
        net(x)
        net(x=x)
        net(x, scale=1.0)
        net(x, 1.0)
    sigs = state(net).signatures
    # scale=1.0 passed explicitly is a different (plain value) signature from leaving the default.
    assert sorted(s.calls for s in sigs.values()) == [2, 2]


def test_new_dtype_rank_or_value_is_a_new_signature_and_runs_eagerly(fake_backend: None) -> None:
    enable_jit_tuning()
    net = Net().eval()
    x = torch.randn(4, 16)
    with torch.no_grad():
        net(x)
        net(x)
        FakeBackend.calls.clear()
        out = net(x, scale=2.0)
        torch.testing.assert_close(out, eager(net, x, scale=2.0))
        net.double()
        out64 = net(x.double())
    assert FakeBackend.calls == []
    assert out64.dtype == torch.float64
    assert len(state(net).signatures) == 3


def test_shapes_outside_the_recorded_range_run_eagerly(fake_backend: None) -> None:
    enable_jit_tuning()
    net = Net().eval()
    with torch.no_grad():
        net(torch.randn(2, 16))
        net(torch.randn(6, 16))
        FakeBackend.calls.clear()
        net(torch.randn(4, 16))  # inside [2, 6]
        assert FakeBackend.calls == ["Net"]
        big = torch.randn(9, 16)
        torch.testing.assert_close(net(big), eager(net, big))
    assert FakeBackend.calls == ["Net"]
    sig = next(iter(state(net).signatures.values()))
    assert sig.min_shapes == [[2, 16]] and sig.max_shapes == [[9, 16]] or sig.out_of_range_calls == 1


def test_samples_are_copies_and_capped(fake_backend: None) -> None:
    enable_jit_tuning()
    jit_config.min_samples = 10
    global_config.max_num_samples_stored = 2
    net = Net().eval()
    x = torch.randn(4, 16)
    with torch.no_grad():
        for _ in range(4):
            net(x)
            x.add_(100.0)  # the user edits the input in place after the call
    sig = next(iter(state(net).signatures.values()))
    assert len(sig.samples) == 2 and sig.calls == 4
    assert float(sig.samples[0].args[0].abs().max()) < 50


def test_byte_cap_stops_storing_samples(fake_backend: None) -> None:
    enable_jit_tuning()
    jit_config.min_samples = 10
    global_config.max_samples_bytes = 100
    net = Net().eval()
    with torch.no_grad():
        net(torch.randn(4, 16))
    assert all(not s.samples for s in state(net).signatures.values())


def test_training_mode_is_not_recorded_nor_routed(fake_backend: None) -> None:
    enable_jit_tuning()
    net = Net()
    x = torch.randn(4, 16)
    for _ in range(3):
        net(x).sum().backward()
    assert not state(net).signatures
    net.eval()
    with torch.no_grad():
        net(x)
        net(x)
    net.train()
    FakeBackend.calls.clear()
    out = net(x)
    assert out.requires_grad and FakeBackend.calls == []


def test_failed_top_module_hands_over_to_children(fake_backend: None) -> None:
    enable_jit_tuning()
    jit_config.backends = [FakeBackend(error=1.0)]  # wrong outputs: always rejected
    net = Net().eval()
    x = torch.randn(4, 16)
    with torch.no_grad():
        net(x)
        net(x)
        st = state(net)
        assert st.status == "failed" and "sample 0" in (st.reason or "")
        children = {c.name: c.status for c in st.children}
        assert children == {"Net.blocks.0": "active", "Net.blocks.1": "active", "Net.head": "active"}
        # Grandchildren wait below the depth limit / for their parent's outcome.
        assert {g.status for c in st.children for g in c.children} <= {"pending"}
        torch.testing.assert_close(net(x), eager(net, x))


def test_skip_min_parameters_and_depth_limits(fake_backend: None) -> None:
    enable_jit_tuning()
    jit_config.skip_modules = ["Net"]
    jit_config.min_parameters = 100
    jit_config.max_depth_level = 1
    net = Net().eval()
    with torch.no_grad():
        net(torch.randn(4, 16))
    st = state(net)
    assert st.status == "skipped"
    by_name = {c.name: c.status for c in st.children}
    assert by_name["Net.head"] == "eager"  # 68 parameters < 100 (a block has 272)
    assert by_name["Net.blocks.0"] == "active"
    assert all(g.status == "pending" for c in st.children for g in c.children)  # depth 2 > 1


def test_excluded_packages_are_untracked(fake_backend: None) -> None:
    enable_jit_tuning()
    jit_config.exclude_packages = ["torch.nn"]
    lin = torch.nn.Linear(4, 4).eval()
    with torch.no_grad():
        lin(torch.randn(2, 4))
    assert state(lin).status == "untracked"
    assert not _tracker.tracked_states()


def test_load_state_dict_after_tuning_follows_new_weights(fake_backend: None) -> None:
    enable_jit_tuning()
    net = Net().eval()
    other = Net().eval()
    x = torch.randn(4, 16)
    with torch.no_grad():
        net(x)
        net(x)
        assert state(net).report_state() == "tuned"
        net.load_state_dict(other.state_dict())
        torch.testing.assert_close(net(x), eager(other, x))
        net.head.weight.mul_(2)  # in place, outside any torch API that aitune hooks
        torch.testing.assert_close(net(x), eager(net, x))


def test_baked_engine_is_dropped_when_weights_change(fake_backend: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from .helpers import _FakeEngine

    monkeypatch.setattr(_FakeEngine, "bakes_weights", True)
    net, x = tuned_net()
    with torch.no_grad():
        net.head.weight.mul_(2)
        FakeBackend.calls.clear()
        torch.testing.assert_close(net(x), eager(net, x))
    assert FakeBackend.calls == []  # stale engine not served
    assert state(net).report_state() == "recording"


def test_baked_engine_steady_calls_skip_the_weights_walk(fake_backend: None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a weight-copying engine, a call with nothing changed sums version counters only (the walk of the
    module's tree cost ~0.6 ms on a ResNet-50-sized module); writes in place and through `.data` still drop it."""
    from aitune.torch.jit import _runtime

    from .helpers import _FakeEngine

    monkeypatch.setattr(_FakeEngine, "bakes_weights", True)
    net, x = tuned_net()
    walks = []
    real = _runtime.weights_state
    monkeypatch.setattr(_runtime, "weights_state", lambda m: walks.append(1) or real(m))
    with torch.no_grad():
        for _ in range(5):
            net(x)
        assert walks == [] and state(net).report_state() == "tuned"
        net.head.weight.data[0, 0] += 1.0  # through .data: no version counter moves
        torch.testing.assert_close(net(x), eager(net, x))
        assert walks and state(net).report_state() == "recording"
        net(x)
        net(x)  # tuned again on the new weights
        assert state(net).report_state() == "tuned"
        walks.clear()
        net(x)
        net(x)
        assert walks == []
        net.head.bias.add_(1.0)
        FakeBackend.calls.clear()
        torch.testing.assert_close(net(x), eager(net, x))
        assert FakeBackend.calls == [] and state(net).report_state() == "recording"


def test_module_replaced_parameter_or_moved_invalidates(fake_backend: None) -> None:
    net, x = tuned_net()
    with torch.no_grad():
        net.head.weight = torch.nn.Parameter(torch.zeros(4, 16))
        torch.testing.assert_close(net(x), eager(net, x))
    assert state(net).report_state() == "recording"


def test_engine_failure_at_run_time_falls_back_to_eager(fake_backend: None, caplog: pytest.LogCaptureFixture) -> None:
    net, x = tuned_net()
    with torch.no_grad():
        sig = next(iter(state(net).signatures.values()))
        sig.engine.cfg = sig.engine.cfg.model_copy(update={"fail_run": True})
        with caplog.at_level(logging.WARNING, logger="aitune"):
            torch.testing.assert_close(net(x), eager(net, x))
    assert "engine" in caplog.text and "AITUNE_STRICT" in caplog.text
    assert sig.status == "eager"


def test_hook_failure_runs_eagerly_and_strict_raises(fake_backend: None, monkeypatch: pytest.MonkeyPatch) -> None:
    enable_jit_tuning()
    net = Net().eval()
    x = torch.randn(4, 16)

    def broken(*_: object) -> object:
        raise RuntimeError("bug in aitune")

    monkeypatch.setattr(_samples, "signature_key", broken)
    with torch.no_grad():
        torch.testing.assert_close(net(x), eager(net, x))
        global_config.strict = True
        with pytest.raises(RuntimeError, match="bug in aitune"):
            net(x)


def test_user_errors_propagate_unchanged(fake_backend: None) -> None:
    enable_jit_tuning()
    net = Net().eval()
    with torch.no_grad(), pytest.raises(RuntimeError, match="mat1 and mat2"):
        net(torch.randn(4, 7))


def test_build_failure_strict_mode_raises_tuning_error(fake_backend: None) -> None:
    enable_jit_tuning()
    jit_config.backends = [FakeBackend(fail_build=True)]
    global_config.strict = True
    net = Net().eval()
    x = torch.randn(4, 16)
    with torch.no_grad():
        net(x)
        with pytest.raises(TuningError, match="cannot build this"):
            net(x)


def test_threads_get_correct_outputs_while_tuning(fake_backend: None) -> None:
    enable_jit_tuning()
    jit_config.min_samples = 3
    net = Net().eval()
    inputs = [torch.randn(4, 16) for _ in range(4)]
    expected = [eager(net, x) for x in inputs]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with torch.no_grad():
                for _ in range(20):
                    torch.testing.assert_close(net(inputs[i]), expected[i])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert state(net).report_state() == "tuned"
    assert FakeBackend.builds.count("Net") == 1


def test_deferred_mode_tunes_on_request_top_down(fake_backend: None) -> None:
    from aitune.torch.jit import tune
    from aitune.torch.jit.config import JITMode

    jit_config.mode = JITMode.TUNE_DEFERRED
    enable_jit_tuning()
    net = Net().eval()
    x = torch.randn(4, 16)
    with torch.no_grad():
        for _ in range(3):
            net(x)
        assert state(net).report_state() == "recording"
        # Children record at the same time, so they are ready if the parent stays eager.
        assert state(net.blocks[0]).status == "active"
        assert tune.deferred() == 1
        assert state(net).report_state() == "tuned"
        assert state(net.blocks[0]).status == "detached"


def test_inspect_mode_records_only(fake_backend: None) -> None:
    from aitune.torch.jit.config import JITMode

    jit_config.mode = JITMode.INSPECT
    enable_jit_tuning()
    net = Net().eval()
    with torch.no_grad():
        for _ in range(5):
            net(torch.randn(4, 16))
    assert FakeBackend.builds == []
    report = _report.build_report()
    states = {m["name"]: m["state"] for m in report["modules"]}
    assert states["Net"] == "recording" and states["Net.blocks.0"] == "recording"


def test_collected_modules_leave_the_table(fake_backend: None) -> None:
    import gc

    enable_jit_tuning()
    net = Net().eval()
    with torch.no_grad():
        net(torch.randn(4, 16))
    key = id(net)
    assert key in _tracker.STATES
    del net
    gc.collect()
    assert key not in _tracker.STATES


def test_modules_from_torch_load_and_built_before_enabling_are_discovered(fake_backend: None, tmp_path) -> None:  # type: ignore[no-untyped-def]
    built_before = Net().eval()
    path = tmp_path / "net.pt"
    torch.save(Net().eval(), path)
    enable_jit_tuning()
    loaded = torch.load(path, weights_only=False)
    x = torch.randn(4, 16)
    with torch.no_grad():
        for module in (built_before, loaded):
            module(x)
            module(x)
            torch.testing.assert_close(module(x), eager(module, x))
            assert state(module).report_state() == "tuned"
    assert state(loaded).name == "Net#2"


def test_collected_module_frees_its_engine_and_stays_in_the_report() -> None:
    import gc
    import weakref

    from aitune.torch.backend import TorchEagerBackend

    jit_config.backends = [TorchEagerBackend()]
    jit_config.min_samples = 2
    global_config.min_speedup = 1e-6
    enable_jit_tuning()

    def run() -> weakref.ref[torch.nn.Module]:
        net = Net().eval()
        with torch.no_grad():
            for _ in range(3):
                net(torch.randn(4, 16))
        assert state(net).report_state() == "tuned"
        return weakref.ref(net)

    ref = run()
    gc.collect()
    assert ref() is None  # neither aitune's table nor the engine keeps the module alive
    entry = {m["name"]: m for m in _report.build_report()["modules"]}["Net"]
    assert entry["state"] == "tuned" and entry["calls"] == 3
    assert _record.BUDGET.used == 0


# -- bounded work --------------------------------------------------------------------------------------------------

def test_a_plain_argument_taking_many_values_is_tuned_for_a_few_of_them(fake_backend: None,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    global_config.max_value_signatures = 2
    enable_jit_tuning()
    net = Net().eval()
    x = torch.randn(4, 16)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="aitune"):
        for step in range(6):
            for _ in range(2):
                torch.testing.assert_close(net(x, scale=float(step)), eager(net, x, scale=float(step)))
    sigs = list(state(net).table.records.values())  # type: ignore[union-attr]
    assert [s.status for s in sigs] == ["tuned", "tuned", "eager", "eager", "eager", "eager"]
    assert "differ only in plain Python values" in (sigs[2].reason or "")
    assert caplog.text.count("later values run eagerly") == 1
    assert FakeBackend.builds.count("Net") == 2


def test_past_the_tuning_budget_new_modules_stay_eager_with_one_warning(fake_backend: None,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    jit_config.max_tunings = 1
    enable_jit_tuning()
    nets = [Net().eval() for _ in range(3)]
    x = torch.randn(4, 16)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="aitune"):
        for net in nets:
            for _ in range(3):
                torch.testing.assert_close(net(x), eager(net, x))
    assert state(nets[0]).report_state() == "tuned"
    for net in nets[1:]:
        sig = list(state(net).table.records.values())[0]  # type: ignore[union-attr]
        assert sig.status == "eager" and "max_tunings=1" in (sig.reason or ""), sig.reason
    assert caplog.text.count("tuning budget is spent") == 1


class RunningSum(torch.nn.Module):
    """Updates its own buffer on every call."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(16, 16)
        self.register_buffer("total", torch.zeros(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.total.add_(x.sum(0))
        return self.fc(x) + self.total


def test_a_condition_that_recurs_is_logged_once_then_counted(fake_backend: None,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    enable_jit_tuning()
    net, twin = RunningSum().eval(), RunningSum().eval()
    twin.load_state_dict(net.state_dict())
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="aitune"):
        for _ in range(40):
            x = torch.randn(4, 16)
            torch.testing.assert_close(net(x), eager(twin, x))
    assert caplog.text.count("weights changed in place") <= 2, caplog.text
    st = state(net)
    assert st.repeats.get("weights changed in place", 0) >= 10, st.repeats
    table = _report.summary_table()
    assert "RunningSum: weights changed in place" in table and "times" in table, table


def test_identical_modules_share_the_decision_and_only_build(fake_backend: None,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A model built in a loop: the first instance tunes, the next ones build the winner and check it on their
    own samples (their weights differ), with no timing."""
    jit_config.backends = [FakeBackend(latency_ms=5.0), FakeBackend()]
    enable_jit_tuning()
    x = torch.randn(4, 16)
    nets = [Net().eval() for _ in range(4)]
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="aitune"):
        for net in nets:
            for _ in range(3):
                torch.testing.assert_close(net(x), eager(net, x))
    sigs = [list(state(n).table.records.values())[0] for n in nets]  # type: ignore[union-attr]
    assert [s.status for s in sigs] == ["tuned"] * 4
    assert [s.cache for s in sigs] == [None, "shared", "shared", "shared"]
    assert {s.backend_description for s in sigs} == {"FakeBackend"}  # the faster one, without latency
    assert FakeBackend.builds.count("Net") == 2 + 3, FakeBackend.builds  # two candidates once, then one build each
    assert caplog.text.count("as chosen for an identical module") == 3


def test_report_writes_after_decisions_are_paced_by_their_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from aitune.torch.jit import _lifecycle

    writes: list[float] = []

    def slow_write() -> None:
        writes.append(time.perf_counter())
        time.sleep(0.01)

    monkeypatch.setattr(_lifecycle, "_write_report_quietly", slow_write)
    paced = _lifecycle._Paced()
    paced()
    paced()  # within 20 x 10 ms of the last write: skipped
    assert len(writes) == 1
    time.sleep(0.25)
    paced()
    assert len(writes) == 2
