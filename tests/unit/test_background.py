"""Background tuning's own parts: torch.fx patches kept to the thread that made them, and `wait()`."""

from __future__ import annotations

import threading

import torch
from torch.fx import _symbolic_trace as fx_trace

from aitune.torch._signature import _background


def test_fx_patches_apply_to_the_patching_thread_only() -> None:
    _background.guard_fx_patches()
    lin = torch.nn.Linear(2, 2)
    seen: dict[str, object] = {}
    patched = threading.Event()
    done = threading.Event()

    def tracer_thread() -> None:
        with fx_trace._Patcher() as patcher:
            patcher.patch_method(torch.nn.Module, "__call__", lambda mod, *a, **k: "traced")
            seen["own"] = lin(torch.ones(1, 2))
            patched.set()
            done.wait(10)

    t = threading.Thread(target=tracer_thread)
    t.start()
    assert patched.wait(10)
    other = lin(torch.ones(1, 2))  # this thread, while the other one's patch is in place
    done.set()
    t.join()
    assert seen["own"] == "traced"
    assert isinstance(other, torch.Tensor) and other.shape == (1, 2)


def test_wait_returns_at_once_when_nothing_is_queued() -> None:
    assert _background.wait(timeout=1.0)


def test_slices_never_overlap_a_held_off_call_and_calls_and_slices_alternate() -> None:
    quiet = _background.Quiet()
    state = {"in_slice": False, "in_call": False, "overlaps": 0, "calls": 0}
    stop = threading.Event()

    def serving() -> None:  # the script: back-to-back calls of a tracked module
        while not stop.is_set():
            entered = quiet.enter()
            try:
                state["in_call"] = True
                state["overlaps"] += state["in_slice"]
                threading.Event().wait(0.002)
                state["overlaps"] += state["in_slice"]
                state["calls"] += 1
            finally:
                state["in_call"] = False
                if entered:
                    quiet.leave()

    t = threading.Thread(target=serving)
    t.start()
    try:
        calls_between: list[int] = []
        for _ in range(20):
            before = state["calls"]
            with quiet.slice():
                state["in_slice"] = True
                state["overlaps"] += state["in_call"]
                threading.Event().wait(0.002)
                state["in_slice"] = False
            calls_between.append(state["calls"] - before)
    finally:
        stop.set()
        t.join()
    assert state["overlaps"] == 0
    assert quiet.slices == 20 and quiet.quiet_slices == 20
    # The script is never starved: between two slices its waiting call goes first.
    assert all(n >= 1 for n in calls_between[1:]), calls_between


def test_a_call_nested_in_a_held_off_call_does_not_wait_again() -> None:
    quiet = _background.Quiet()
    assert quiet.enter()
    assert not quiet.enter()  # nested: counted once
    quiet.leave()
    with quiet.slice():  # nothing in flight: the slice starts at once
        pass
    assert quiet.quiet_slices == 1


def test_measured_calls_run_in_slices_until_one_is_slower_than_the_limit() -> None:
    from aitune.torch import _timing

    slices: list[int] = []

    class Counting:
        def __enter__(self) -> None:
            slices.append(1)

        def __exit__(self, *exc: object) -> None:
            return None

    calls = iter([0.0] * 4 + [0.05] + [0.0] * 20)
    try:
        _timing.HELD_OFF.slice = Counting
        _timing.HELD_OFF.limit_ms = 20.0
        _timing.measure_latency_ms(lambda: threading.Event().wait(next(calls)), lambda: ((), {}),
                                   torch.device("cpu"), warmup=0, iterations=10, max_seconds=5)
    finally:
        _timing.HELD_OFF.slice = None
        _timing.HELD_OFF.limit_ms = None
    assert len(slices) == 5  # the fifth call took 50 ms > 20 ms: the rest ran without slices


def test_eager_latency_in_place_comes_from_the_scripts_own_calls() -> None:
    from aitune.torch._samples import SignatureRecord

    sig = SignatureRecord(key=("k",), description=[], min_shapes=[], max_shapes=[])
    results: list[object] = []

    def serving() -> None:
        for i in range(40):
            probe = sig.eager_probe
            results.append(probe.run(lambda i=i: i) if probe is not None else i)  # type: ignore[misc]
            threading.Event().wait(0.001)

    t = threading.Thread(target=serving)
    t.start()
    try:
        ms = _background.eager_in_place(sig, torch.device("cpu"))
    finally:
        t.join()
        from aitune.torch import _timing

        _timing.HELD_OFF.limit_ms = None
    assert ms is not None and ms >= 0
    assert sig.eager_probe is None
    assert "in place" in sig.timing["eager"]
    assert results == list(range(40))  # every call got its own result, probed or not


def test_eager_latency_in_place_is_none_without_calls() -> None:
    from aitune.torch._samples import SignatureRecord

    sig = SignatureRecord(key=("k",), description=[], min_shapes=[], max_shapes=[])
    assert _background.eager_in_place(sig, torch.device("cpu")) is None
    assert sig.eager_probe is None
