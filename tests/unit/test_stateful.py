"""Our own logic for stateful calls: copies that share nothing, state objects in signatures, the hook protocol
run around engines as torch runs it, the registration watch, module-state detection, and which backends may
serve a call at all (`_decide.restrict`)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from aitune.torch import _tree
from aitune.torch._samples import Sample, SignatureRecord
from aitune.torch._signature import _decide, _hooks, _state
from aitune.torch.backend import Backend, TorchEagerBackend, TorchInductorJitBackend
from aitune.torch.tune_strategy import HighestThroughputStrategy
from tests.unit.helpers import Block, only_signature, record


class Cache:
    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.initialized = False
        self.step = 0


def test_clone_copies_state_objects_whole_and_keeps_aliasing() -> None:
    shared = torch.randn(3)
    cache = Cache()
    cache.keys.append(shared)
    args = (shared, cache, [cache])
    copy = _tree.clone(args)
    assert copy[1] is not cache and copy[2][0] is copy[1], "one object copied once, aliasing kept"
    assert copy[1].keys[0] is copy[0], "a tensor inside the object is the same copy as the argument"
    copy[1].keys.append(torch.zeros(1))
    copy[0].add_(1)
    assert len(cache.keys) == 1 and torch.equal(cache.keys[0], shared) and not torch.equal(shared, copy[0])


def test_clone_keeps_requires_grad_as_leaves() -> None:
    w = torch.randn(3, requires_grad=True)
    non_leaf = w * 2
    copy = _tree.clone((non_leaf, torch.ones(2)))
    assert copy[0].requires_grad and copy[0].is_leaf and not copy[1].requires_grad


def test_an_object_that_cannot_be_copied_says_so() -> None:
    holder = Cache()
    holder.lock = threading.Lock()  # type: ignore[attr-defined]
    with pytest.raises(_tree.Uncopyable, match="Cache cannot be copied"):
        _tree.clone((holder,))


def test_state_objects_in_signatures_tell_a_cache_before_and_after_its_first_update() -> None:
    empty, filled = Cache(), Cache()
    filled.keys.append(torch.zeros(1, 2))
    filled.initialized = True
    later = Cache()
    later.keys.append(torch.zeros(1, 5))
    later.initialized, later.step = True, 7
    assert _tree.spec(empty) != _tree.spec(filled)
    assert _tree.spec(filled) == _tree.spec(later), "sizes and counters are not part of a signature"
    assert list(_tree.all_tensors((1, later))) == later.keys and _tree.holds_state([later])
    cyclic = Cache()
    cyclic.keys = [cyclic]  # type: ignore[list-item]
    assert _tree.spec(cyclic)  # terminates


def _hooked(module: torch.nn.Module) -> list[str]:
    seen: list[str] = []

    def pre(m: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        seen.append("pre")
        return (args[0] * 2,)

    def pre_kw(m: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        seen.append("pre_kw")
        return args, kwargs

    def post(m: torch.nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
        seen.append("post")
        return out + 1

    def post_kw(m: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: torch.Tensor) -> None:
        seen.append("post_kw")

    def always(m: torch.nn.Module, args: tuple[Any, ...], out: Any) -> None:
        seen.append("always")

    module.register_forward_pre_hook(pre)
    module.register_forward_pre_hook(pre_kw, with_kwargs=True)
    module.register_forward_hook(post)
    module.register_forward_hook(post_kw, with_kwargs=True)
    module.register_forward_hook(always, always_call=True)
    return seen


def test_call_with_hooks_runs_them_as_torch_does() -> None:
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 4)
    seen = _hooked(module)
    x = torch.randn(2, 4)
    want = torch.nn.Module._wrapped_call_impl(module, x)
    torch_order = list(seen)
    seen.clear()
    got = _hooks.call_with_hooks(module, lambda a, k: module.forward(*a, **k), (x,), {})
    torch.testing.assert_close(got, want)
    assert seen == torch_order == ["pre", "pre_kw", "post", "post_kw", "always"]


def test_call_with_hooks_runs_always_call_hooks_on_failure() -> None:
    module = torch.nn.Linear(4, 4)
    seen = _hooked(module)

    def fails(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        raise ValueError("forward failed")

    with pytest.raises(ValueError, match="forward failed"):
        _hooks.call_with_hooks(module, fails, (torch.randn(2, 4),), {})
    assert seen == ["pre", "pre_kw", "always"]


def test_the_registration_watch_bumps_and_restores_exactly() -> None:
    before = {n: torch.nn.Module.__dict__[n] for n in _hooks._REGISTRATIONS}
    _hooks.watch()
    try:
        start = _hooks.HOOKS.value
        torch.nn.Linear(2, 2).register_forward_hook(lambda *a: None)
        assert _hooks.HOOKS.value == start + 1
    finally:
        _hooks.unwatch()
    assert {n: torch.nn.Module.__dict__[n] for n in _hooks._REGISTRATIONS} == before


def test_hooks_that_block_an_engine_are_named() -> None:
    outer = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    assert _hooks.blocked_by(outer) is None and _hooks.hooked_submodule(outer) is None
    handle = outer[1].register_forward_hook(lambda *a: None)
    assert _hooks.hooked_submodule(outer) == "1"
    handle.remove()
    handle = outer.register_full_backward_hook(lambda *a: None)
    assert "backward hooks" in (_hooks.blocked_by(outer) or "")
    handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        assert "global module hooks" in (_hooks.blocked_by(outer) or "")
    finally:
        handle.remove()


class Counting(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(2, 2)
        self.calls = 0
        self.register_buffer("total", torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.total += x.sum(0)
        return self.fc(x)


def test_module_state_changes_are_detected() -> None:
    module = Counting()
    before = _state.snapshot(module)
    with torch.no_grad():
        module(torch.ones(3, 2))
    what = _state.changes(before, _state.snapshot(module)) or ""
    assert "attribute calls" in what and "buffer total" in what
    quiet = Block(4).eval()
    before = _state.snapshot(quiet)
    with torch.no_grad():
        quiet(torch.ones(2, 4))
    assert _state.changes(before, _state.snapshot(quiet)) is None


class Graphs(TorchEagerBackend):
    """At the seam: a backend that says its engines replay CUDA graphs."""

    def uses_cuda_graphs(self, device: torch.device) -> bool:
        return True


def _plan(backends: list[Backend]) -> _decide.Plan:
    return _decide.Plan(HighestThroughputStrategy(), backends)


def test_restrict_drops_cuda_graphs_for_cache_arguments_and_non_autograd_backends_for_grad_calls() -> None:
    from aitune.torch.backend import ONNXRuntimeBackend

    net = Block(4).eval()
    cache = Cache()
    with torch.no_grad():
        sig, samples = record(net, [((torch.randn(2, 4),), {})])
    cache_samples = [Sample(samples[0].args, {"cache": cache}, samples[0].outputs)]
    plan = _decide.restrict(_plan([Graphs(), TorchEagerBackend()]), net, sig, cache_samples, "net")
    assert [type(b) for b in plan.backends] == [TorchEagerBackend]
    plan = _decide.restrict(_plan([Graphs()]), net, sig, cache_samples, "net")
    assert plan.backends == [] and "CUDA graph" in (plan.why_none or "")

    # A cache allocated once and updated in place (its tensors marked static, as transformers' StaticCache marks
    # them) keeps CUDA graphs; one with an unmarked tensor, or none yet, does not.
    static = Cache()
    static.keys = [torch.zeros(2, 4), torch.zeros(2, 4)]
    for t in static.keys:
        torch._dynamo.mark_static_address(t)
    static_samples = [Sample(samples[0].args, {"cache": static}, samples[0].outputs)]
    assert [type(b) for b in _decide.restrict(_plan([Graphs()]), net, sig, static_samples, "net").backends] == [Graphs]
    copied = _tree.clone(static)
    assert all(_tree.static_address(t) for t in copied.keys) and copied.keys[0] is not static.keys[0]
    static.keys.append(torch.zeros(2, 4))
    assert _decide.restrict(_plan([Graphs()]), net, sig, static_samples, "net").backends == []

    grad_sig = SignatureRecord(key=(True, False, ()), description=[], min_shapes=[], max_shapes=[])
    plan = _decide.restrict(_plan([ONNXRuntimeBackend(), TorchInductorJitBackend()]), net, grad_sig, samples, "net")
    assert [type(b) for b in plan.backends] == [TorchInductorJitBackend]
    plan = _decide.restrict(_plan([ONNXRuntimeBackend()]), net, grad_sig, samples, "net")
    assert plan.backends == [] and "need autograd" in (plan.why_none or "")
    with torch.no_grad():
        for p in net.parameters():
            p.requires_grad_(False)
    assert _decide.restrict(_plan([ONNXRuntimeBackend()]), net, grad_sig, samples, "net").backends


def test_a_state_change_keeps_the_signature_from_every_engine() -> None:
    net = Block(4).eval()
    sig, samples = record(net, [((torch.randn(2, 4),), {})])
    sig.state_change = "attribute calls of the module"
    plan = _decide.restrict(_plan([TorchEagerBackend()]), net, sig, samples, "net")
    assert plan.backends == [] and "changes the module's own state" in (plan.why_none or "")




class WithState(torch.nn.Module):
    """Returns its own buffer and a view of its input, which callers may edit in place."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)
        self.register_buffer("state", torch.zeros(8))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.fc(x), self.state, x[0]


def test_outputs_that_alias_buffers_or_inputs_keep_aliasing_them(fast_tuning: None) -> None:
    import aitune.torch as ait
    from aitune.torch.backend import ONNXRuntimeBackend
    from aitune.torch.tune_strategy import OneBackendStrategy

    data = [torch.randn(2, 8) for _ in range(3)]
    ort = ait.Module(WithState().eval(), "ort", strategy=OneBackendStrategy(ONNXRuntimeBackend()))
    ait.tune(ort, data)
    sig = only_signature(ort)
    assert sig.status == "eager" and "output.1 is the module's buffer state" in (sig.reason or ""), sig.reason

    net = WithState().eval()
    jit = ait.Module(net, "jit", strategy=OneBackendStrategy(TorchInductorJitBackend()))
    ait.tune(jit, data)
    sig = only_signature(jit)
    assert sig.status == "tuned", sig.reason
    x = torch.randn(2, 8)
    with torch.no_grad():
        _, state, row = jit(x)
    assert sig.engine_calls == 1
    state.add_(1.0)
    row.fill_(5.0)
    assert torch.equal(net.state, torch.ones(8)) and torch.equal(x[0], torch.full((8,), 5.0))


def test_while_several_threads_call_modules_no_backend_that_exports_is_tried() -> None:
    from aitune.torch._signature._route import CALLERS
    from aitune.torch.backend import ONNXRuntimeBackend

    block = Block().eval()
    sig, samples = record(block, [((torch.randn(2, 16),), {}) for _ in range(2)])
    plan = _decide.Plan(HighestThroughputStrategy(), [ONNXRuntimeBackend(), TorchInductorJitBackend()])
    CALLERS.note()
    assert _decide.restrict(plan, block, sig, samples, "block").backends == plan.backends
    other = threading.Thread(target=CALLERS.note)
    other.start()
    other.join()
    narrowed = _decide.restrict(plan, block, sig, samples, "block")
    assert [b.name for b in narrowed.backends] == ["TorchInductorJitBackend"]
    alone = _decide.restrict(_decide.Plan(plan.strategy, [ONNXRuntimeBackend()]), block, sig, samples, "block")
    assert alone.backends == [] and "several threads call modules" in (alone.why_none or "")


class Counts(torch.nn.Module):
    """Returns a Python number computed from the data."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        y = self.fc(x)
        return y, int((y > 0.2).sum())


def test_python_numbers_in_outputs_keep_exported_engines_away(fast_tuning: None) -> None:
    import aitune.torch as ait
    from aitune.torch.backend import ONNXRuntimeBackend
    from aitune.torch.tune_strategy import OneBackendStrategy

    data = [torch.randn(4, 8) for _ in range(3)]
    net = Counts().eval()
    ort = ait.Module(net, "ort", strategy=OneBackendStrategy(ONNXRuntimeBackend()))
    ait.tune(ort, data)
    sig = only_signature(ort)
    assert sig.status == "eager" and "outputs hold Python numbers" in (sig.reason or ""), sig.reason
    served = ait.Module(Counts().eval(), "eager", strategy=OneBackendStrategy(TorchEagerBackend()))
    ait.tune(served, data)
    assert only_signature(served).status == "tuned"
    with torch.no_grad():
        for _ in range(3):
            x = torch.randn(4, 8) * 3
            assert served(x)[1] == int((served.__wrapped__.fc(x) > 0.2).sum())


def test_refill_puts_values_back_into_the_same_tensors_or_says_it_cannot() -> None:
    cache = Cache()
    cache.keys = [torch.zeros(2, 3)]
    src = (torch.ones(2), {"cache": cache})
    held = _tree.clone(src)
    memory = held[1]["cache"].keys[0].data_ptr()
    held[1]["cache"].keys[0].add_(5.0)  # a call filling the copy in place
    held[0].mul_(3.0)
    assert _tree.refill(held, src)
    assert held[1]["cache"].keys[0].data_ptr() == memory and torch.equal(held[1]["cache"].keys[0], torch.zeros(2, 3))
    assert torch.equal(held[0], torch.ones(2))
    held[1]["cache"].keys.append(torch.zeros(2, 3))  # a call that grew the cache: not refillable
    assert not _tree.refill(held, src)
    held = _tree.clone(src)
    held[1]["cache"].step = 4  # a plain value it changed
    assert not _tree.refill(held, src)
