"""The in-place check (an engine slower inside the script than timed on its own is dropped) and the thread
binding of CUDA-graph engines (served only on the thread that captured them)."""

from __future__ import annotations

import logging
import threading

import pytest
import torch

from aitune.torch._signature._inplace import ACTIVITY, InPlaceCheck
from aitune.torch.config import config as global_config
from aitune.torch.jit import _tracker, enable_jit_tuning
from aitune.torch.jit.config import config as jit_config

from .helpers import FakeBackend, Net


def drive(check: InPlaceCheck, periods: dict[str, float], calls: int) -> list[str]:
    """Feed `check` call starts spaced by the period of the route the previous call took."""
    now, routes = 0.0, []
    for _ in range(calls):
        route = check.route(now)
        routes.append(route)
        if route == "done":
            break
        now += periods[route]
    return routes


def test_blocks_alternate_and_a_slower_engine_is_reverted() -> None:
    check = InPlaceCheck(8)
    routes = drive(check, {"engine": 0.004, "eager": 0.002}, 20)
    assert routes[:8] == ["engine"] * 2 + ["eager"] * 2 + ["engine"] * 2 + ["eager"] * 2
    assert routes[8] == "done" and check.verdict == "reverted"
    assert check.engine_ms == pytest.approx(4.0) and check.eager_ms == pytest.approx(2.0)
    assert "not faster than eager: 4.000 ms vs 2.000 ms" in (check.why or "")


def test_a_faster_engine_is_kept() -> None:
    check = InPlaceCheck(16)
    drive(check, {"engine": 0.001, "eager": 0.003}, 40)
    assert check.verdict == "kept" and check.engine_ms == pytest.approx(1.0)
    assert check.to_report()["eager_period_ms"] == pytest.approx(3.0)


def test_with_adjacent_a_period_counts_only_between_consecutive_calls_of_the_signature() -> None:
    # The CUDA graph against the engine inside it (`GraphAtSwitch`): other calls of the signature (eager ones of
    # its own in-place check, other threads') between two turns leave that period out.
    count = [0]
    check = InPlaceCheck(8, subject="the CUDA graph", rival="the engine inside it", adjacent=lambda: count[0])
    now = 0.0
    for i in range(40):
        route = check.route(now)
        if route == "done":
            break
        count[0] += 1 if i % 3 else 2  # every third call, another call of the signature came in between
        now += {"engine": 0.004, "eager": 0.002}[route] * (1 if i % 3 else 100)
    assert check.verdict == "reverted"
    assert check.engine_ms == pytest.approx(4.0) and check.eager_ms == pytest.approx(2.0)
    assert max(check.periods["engine"] + check.periods["eager"]) < 0.005  # none of the 100x periods counted
    assert "not faster than the engine inside it" in (check.why or "")


def test_periods_with_aitune_work_are_left_out_and_too_few_is_inconclusive() -> None:
    check = InPlaceCheck(4)
    now = 0.0
    for _ in range(40):
        ACTIVITY.bump()  # aitune worked during every period: none counts
        if check.route(now) == "done":
            break
        now += 0.001
    assert check.verdict == "inconclusive" and check.periods == {"engine": [], "eager": []}


def test_calls_from_another_thread_end_the_check() -> None:
    check = InPlaceCheck(8)
    check.route(0.0)
    seen: list[str] = []
    t = threading.Thread(target=lambda: seen.append(check.route(0.1)))
    t.start()
    t.join()
    assert seen == ["done"] and check.verdict == "skipped"


def tune(net: Net, x: torch.Tensor) -> None:
    enable_jit_tuning()
    with torch.no_grad():
        net(x)
        net(x)
    assert _tracker.STATES[id(net)].report_state() == "tuned"


def test_an_engine_slower_in_place_is_dropped_and_its_children_tried(
        fake_backend: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    global_config.inplace_check_calls = 8
    net, x = Net().eval(), torch.randn(4, 16)
    tune(net, x)
    monkeypatch.setattr(FakeBackend, "slow_ms", 20.0)  # the engine turns slow in place
    FakeBackend.calls.clear()
    with caplog.at_level(logging.INFO, logger="aitune"), torch.no_grad():
        outs = [net(x) for _ in range(9)]
    st = _tracker.STATES[id(net)]
    assert {c.status for c in st.children} == {"active"}
    engine_calls = list(FakeBackend.calls)
    with torch.no_grad():
        want = net.head(net.blocks[1](net.blocks[0](x)))
    for out in outs:
        torch.testing.assert_close(out, want)
    assert engine_calls == ["Net"] * 4  # two blocks of two engine calls, two of two eager calls
    sig = next(iter(st.signatures.values()))
    assert st.status == "eager" and sig.engine is None and sig.status == "eager"
    assert sig.to_report()["inplace"]["verdict"] == "reverted"
    assert "in place it was not faster than eager" in (st.reason or "")
    assert "trying its children instead" in caplog.text


def test_an_engine_faster_in_place_keeps_serving(fake_backend: None) -> None:
    global_config.inplace_check_calls = 8
    net, x = Net().eval(), torch.randn(4, 16)
    tune(net, x)
    FakeBackend.calls.clear()
    with torch.no_grad():
        for _ in range(12):
            net(x)
    sig = next(iter(_tracker.STATES[id(net)].signatures.values()))
    check = sig.inplace
    assert check is not None and check.verdict in ("kept", "reverted")  # timing noise decides on a tiny CPU model
    if check.verdict == "kept":
        assert sig.engine is not None and len(FakeBackend.calls) == 12 - 4


def test_zero_turns_the_check_off(fake_backend: None) -> None:
    global_config.inplace_check_calls = 0
    net, x = Net().eval(), torch.randn(4, 16)
    tune(net, x)
    FakeBackend.calls.clear()
    with torch.no_grad():
        for _ in range(6):
            net(x)
    assert FakeBackend.calls == ["Net"] * 6
    assert next(iter(_tracker.STATES[id(net)].signatures.values())).inplace is None


def test_a_cuda_graph_engine_serves_only_its_own_thread(fake_backend: None) -> None:
    global_config.inplace_check_calls = 0
    jit_config.backends = [FakeBackend(graphs=True)]
    net, x = Net().eval(), torch.randn(4, 16)
    tune(net, x)
    FakeBackend.calls.clear()
    got: list[torch.Tensor] = []

    def other() -> None:
        with torch.no_grad():
            got.append(net(x))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    with torch.no_grad():
        net(x)
    sig = next(iter(_tracker.STATES[id(net)].signatures.values()))
    assert FakeBackend.calls == ["Net"]  # the tuning thread's call only
    assert sig.other_thread_calls == 1 and sig.to_report()["other_thread_calls"] == 1
    torch.testing.assert_close(got[0], torch.nn.Module._wrapped_call_impl(net, x))


def test_with_several_calling_threads_no_cuda_graph_backend_is_tried(fake_backend: None) -> None:
    jit_config.backends = [FakeBackend(graphs=True), FakeBackend()]
    enable_jit_tuning()
    net, x = Net().eval(), torch.randn(4, 16)
    def other() -> None:
        with torch.no_grad():
            net(x)

    t = threading.Thread(target=other)
    with torch.no_grad():
        t.start()
        t.join()
        net(x)
    sig = next(iter(_tracker.STATES[id(net)].signatures.values()))
    assert sig.status == "tuned" and sig.graph_thread is None
    assert any("a CUDA graph serves only the thread that captured it" in why for why in sig.not_tried.values())
