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


def test_a_stop_abandons_the_tuning_under_way_at_its_next_step() -> None:
    """The script ends (here: `stop`, as at interpreter exit) while the worker builds: the build that fails because
    of the shutdown is not its backend's failure, no further candidate is built, and the signature is left eager
    with the reason, not `failed`."""
    import aitune.torch as ait
    from aitune.torch.tune_strategy import FirstWinsStrategy
    from tests.unit.helpers import FakeBackend, Net

    building, release = threading.Event(), threading.Event()
    built: list[str] = []

    class Shutting(FakeBackend):
        def build(self, module: torch.nn.Module, *args: object, **kwargs: object) -> object:
            built.append("shutting")
            building.set()
            release.wait(10)
            raise RuntimeError("can't register atexit after shutdown")

    class Next(FakeBackend):
        def build(self, *args: object, **kwargs: object) -> object:
            built.append("next")
            return super().build(*args, **kwargs)  # type: ignore[arg-type]

    net = Net().eval()
    model = ait.Module(net, "net", strategy=FirstWinsStrategy([Shutting(), Next()]))
    x = torch.randn(4, 16)
    try:
        ait.tune(model, [x, x], background=True)
        assert building.wait(20), "the worker never started building"
        stopper = threading.Thread(target=_background.WORKER.stop, args=(10.0, "the script ended"))
        stopper.start()
        threading.Event().wait(0.05)
        release.set()
        stopper.join(20)
        assert not stopper.is_alive()
        assert _background.wait(timeout=10)
    finally:
        release.set()
        _background.WORKER.restart()
    assert built == ["shutting"], built
    from aitune.torch._explicit._module import runtime_of

    rt = runtime_of(model)
    assert rt is not None
    [sig] = rt.signatures.values()
    assert sig.status == "eager" and sig.reason == "tuning abandoned: the script ended", (sig.status, sig.reason)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x))  # served eagerly
