"""The explicit API for real: ait.Module wrappers, ait.tune on models, pipelines and functions, ait.inspect and
ait.wrap, with real backends (TorchEager, ONNX Runtime, Inductor) and FakeBackend where a failure is needed."""

from __future__ import annotations

import copy
import logging
import pickle
from typing import Any

import pytest
import torch

import aitune.torch as ait
from aitune.torch._explicit._module import ModuleRuntime, runtime_of
from aitune.torch.backend import ONNXRuntimeBackend, TorchEagerBackend, TorchInductorJitBackend
from aitune.torch.config import config as global_config
from aitune.torch.tune_strategy import OneBackendStrategy

from .helpers import Block, FakeBackend, FakeConfig, Net

TOL: dict[str, Any] = {"rtol": 1e-4, "atol": 1e-5}


pytestmark = pytest.mark.usefixtures("fast_tuning")


def eager() -> OneBackendStrategy:
    return OneBackendStrategy(TorchEagerBackend())


def fake(**options: Any) -> OneBackendStrategy:
    return OneBackendStrategy(FakeBackend(**options))


def copy_of(net: torch.nn.Module) -> torch.nn.Module:
    twin = type(net)().eval()
    twin.load_state_dict(net.state_dict())
    return twin


def rt_of(wrapper: Any) -> ModuleRuntime:
    rt = runtime_of(wrapper)
    assert rt is not None, f"{type(wrapper).__name__} is not an ait.Module"
    return rt


def sig_of(wrapper: Any, index: int = 0) -> Any:
    return list(rt_of(wrapper).signatures.values())[index]


class Parent(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Linear(16, 16)
        self.block = Block(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.stem(x))


class Pipeline:
    """Diffusers-like: modules in attributes (one in a list), a plain value, and a __call__ that runs them."""

    def __init__(self) -> None:
        self.text_encoder = Net(width=16).eval()
        self.unet = torch.nn.Sequential(Block(16), Block(16)).eval()
        self.heads = [torch.nn.Linear(16, 16).eval()]
        self.unused = torch.nn.Linear(16, 16).eval()
        self.steps = 2

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.text_encoder(x)] * 4, dim=-1)
        for _ in range(self.steps):
            h = self.unet(h)
        return self.heads[0](h)


# -- the wrapper --------------------------------------------------------------------------------------------------

def test_wrapper_is_transparent() -> None:
    net = Net().eval()
    m = ait.Module(net)
    assert isinstance(m, Net) and isinstance(m, torch.nn.Module) and isinstance(m, ait.Module)
    assert rt_of(m).name == "Net" and runtime_of(net) is None
    assert m.head is net.head and m.blocks[0].fc.weight is net.blocks[0].fc.weight
    assert m.state_dict().keys() == net.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), net.state_dict().values()))
    assert [p is q for p, q in zip(m.parameters(), net.parameters())] == [True] * len(list(net.parameters()))
    assert [n for n, _ in m.named_modules()] == [n for n, _ in net.named_modules()]
    for method, args in [("to", ("cpu",)), ("eval", ()), ("train", (False,)), ("float", ()), ("cpu", ()),
                         ("requires_grad_", (False,)), ("apply", (lambda _: None,))]:
        assert getattr(m, method)(*args) is m, method
    seen: list[torch.Size] = []
    handle = m.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    x = torch.randn(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(m(x), net(x))
    handle.remove()
    assert seen == [torch.Size([3, 4]), torch.Size([3, 4])]
    m.custom = 5  # attribute writes reach the module
    assert net.custom == 5
    m.load_state_dict(Net().state_dict())
    assert torch.equal(m.head.weight, net.head.weight)
    with pytest.raises(TypeError, match="already an ait.Module"):
        ait.Module(m)


def test_wrapper_as_submodule_keeps_state_dict_and_routes_calls() -> None:
    parent = Parent().eval()
    before = parent.state_dict()
    parent.block = ait.Module(parent.block, "block", strategy=eager())
    after = parent.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert parent.to("cpu") is parent and runtime_of(parent.block) is not None
    xs = [torch.randn(2, 16) for _ in range(2)]
    assert ait.tune(parent, xs) is parent
    rt = rt_of(parent.block)
    assert rt.state == "tuned"
    sig = sig_of(parent.block)
    assert sig.backend == "TorchEagerBackend" and sig.samples == [] and sig.reference is not None
    with torch.no_grad():
        torch.testing.assert_close(parent(xs[0]), Parent.forward(parent, xs[0]))
    assert sig.engine_calls == 2  # the parent's call and the direct one above, both through the engine


# -- ait.tune ------------------------------------------------------------------------------------------------------

def test_tune_with_onnxruntime_matches_eager_out_of_range_and_stale_weights_run_eagerly(
        caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("onnxruntime")
    net = Net().eval()
    m = ait.Module(net, "net", strategy=OneBackendStrategy(ONNXRuntimeBackend()))
    with caplog.at_level(logging.INFO, logger="aitune"):
        ait.tune(m, [torch.randn(4, 16) for _ in range(3)])
    assert "net: tuned with ONNXRuntimeBackend" in caplog.text
    sig = sig_of(m)
    assert sig.status == "tuned" and sig.engine_range == ([[4, 16]], [[4, 16]]) and sig.samples == []
    x = torch.randn(4, 16)
    with torch.no_grad():
        torch.testing.assert_close(m(x), net(x), **TOL)
        assert sig.engine_calls == 1
        wide = torch.randn(7, 16)  # outside the tuned range: eager, and correct
        torch.testing.assert_close(m(wide), net(wide))
        assert sig.out_of_range_calls == 1 and sig.engine_calls == 1
        net.head.weight.add_(1.0)  # ONNX Runtime holds a copy of the weights: it must not be served any more
        torch.testing.assert_close(m(x), net(x))
    rt = rt_of(m)
    assert rt.state == "passthrough" and sig.engine is None and sig.engine_calls == 1


def test_tune_pipeline_with_per_module_and_per_signature_strategies() -> None:
    pipe = Pipeline()
    # text_encoder: eager for its first signature, a backend that cannot build for its second.
    pipe.text_encoder = ait.Module(pipe.text_encoder, "text_encoder", strategy=eager(),
                                   strategies={1: fake(fail_build=True)})
    pipe.unet = ait.Module(pipe.unet, "unet", strategy=fake())
    pipe.heads[0] = ait.Module(pipe.heads[0], "head")  # no strategy: tune's default
    FakeBackend.builds.clear()

    def run(x: torch.Tensor) -> torch.Tensor:
        pipe.text_encoder(x, scale=2.0)
        return pipe(x)

    dataset = [(torch.randn(2, 16),), (torch.randn(2, 16),)]
    assert ait.tune(pipe, dataset, func=run, strategy=fake(latency_ms=0.0)) is pipe
    enc, unet, head = (rt_of(o) for o in (pipe.text_encoder, pipe.unet, pipe.heads[0]))
    # Signatures are indexed in order of first call: #0 is (x, scale=2.0), #1 is (x).
    first, second = enc.signatures.values()
    assert [name for name, _ in first.key[2]] == ["x", "scale"] and [n for n, _ in second.key[2]] == ["x"]
    assert first.status == "tuned" and first.backend == "TorchEagerBackend"
    assert second.status == "eager" and "cannot build this" in (second.reason or "")
    assert enc.state == "tuned"
    assert unet.state == "tuned" and sig_of(pipe.unet).backend == "FakeBackend"
    assert head.state == "tuned" and sig_of(pipe.heads[0]).backend == "FakeBackend"
    assert sorted(FakeBackend.builds) == ["Linear", "Net", "Sequential"]
    x = torch.randn(2, 16)
    with torch.no_grad():
        want = Pipeline.__call__(_eager_twin(pipe), x)
        torch.testing.assert_close(pipe(x), want, **TOL)
        torch.testing.assert_close(pipe.text_encoder(x, scale=2.0), pipe.text_encoder.__wrapped__(x, scale=2.0))


def _eager_twin(pipe: Pipeline) -> Pipeline:
    twin = Pipeline()
    twin.text_encoder.load_state_dict(pipe.text_encoder.state_dict())
    twin.unet.load_state_dict(pipe.unet.state_dict())
    twin.heads[0].load_state_dict(pipe.heads[0].state_dict())
    return twin


def test_tune_func_tunes_the_wrappers_it_called() -> None:
    a = ait.Module(Block(16).eval(), "a", strategies=[eager()])  # by signature index
    b = ait.Module(Block(16).eval(), "b", strategy=eager())
    idle = ait.Module(Block(16).eval(), "idle", strategy=eager())

    def two_steps(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return b(a(x) + y)

    dataset = [{"x": torch.randn(3, 16), "y": torch.randn(3, 16)} for _ in range(2)]
    assert ait.tune(func=two_steps, dataset=dataset) is two_steps
    states = {rt.name: rt.state for rt in map(rt_of, (a, b, idle))}
    assert states == {"a": "tuned", "b": "tuned", "idle": "passthrough"}
    x, y = torch.randn(3, 16), torch.randn(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(two_steps(x, y), b.__wrapped__(a.__wrapped__(x) + y))
    assert sig_of(a).engine_calls == 1 and sig_of(b).engine_calls == 1


def test_tune_with_inductor() -> None:
    block = Block(16).eval()
    m = ait.Module(block, strategy=OneBackendStrategy(TorchInductorJitBackend()))
    ait.tune(m, [torch.randn(4, 16) for _ in range(2)])
    assert sig_of(m).backend == "TorchInductorJitBackend"
    x = torch.randn(4, 16)
    with torch.no_grad():
        torch.testing.assert_close(m(x), block(x), **TOL)
    assert sig_of(m).engine_calls == 1


def test_default_strategy_uses_the_jit_candidates() -> None:
    from aitune.torch.jit.config import config as jit_config

    jit_config.backends = [TorchEagerBackend()]
    m = ait.Module(Block(16).eval())
    ait.tune(m, [torch.randn(2, 16)])
    assert sig_of(m).candidates[0]["backend"] == "TorchEagerBackend" and sig_of(m).status == "tuned"


def test_training_mode_calls_run_eagerly_and_are_not_recorded() -> None:
    m = ait.Module(Block(16), strategy=eager())  # left in training mode
    ait.tune(m, [torch.randn(2, 16)])
    rt = rt_of(m)
    assert rt.state == "passthrough" and rt.signatures == {}
    m.eval()
    ait.tune(m, [torch.randn(2, 16)])
    assert rt.state == "tuned"
    m.train()
    x = torch.randn(2, 16)
    torch.testing.assert_close(m(x), m.__wrapped__(x))
    assert sig_of(m).engine_calls == 0


def test_moving_a_tuned_module_drops_its_engines() -> None:
    m = ait.Module(Block(16).eval(), strategy=eager())
    ait.tune(m, [torch.randn(2, 16)])
    assert m.double() is m
    rt = rt_of(m)
    assert rt.state == "passthrough" and sig_of(m).engine is None
    x = torch.randn(2, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.__wrapped__(x))


def test_enable_passthrough_from_tuned_needs_force() -> None:
    m = ait.Module(Block(16).eval(), strategy=eager())
    ait.tune(m, [torch.randn(2, 16)])
    with pytest.raises(ait.AITuneError, match="force=True"):
        m.enable_passthrough()
    m.enable_passthrough(force=True)
    rt = rt_of(m)
    assert rt.state == "passthrough" and sig_of(m).engine is None


def test_jit_mode_leaves_wrapped_modules_alone() -> None:
    from aitune.torch.jit import _tracker, enable_jit_tuning
    from aitune.torch.jit.config import config as jit_config

    jit_config.backends = [FakeBackend()]
    enable_jit_tuning()
    net = Net().eval()
    m = ait.Module(net, strategy=eager())
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(2, 16))
    tracked = {id(mod) for mod in net.modules()}
    assert not tracked & set(_tracker.STATES)
    ait.tune(m, [torch.randn(2, 16)])
    assert sig_of(m).status == "tuned" and not tracked & set(_tracker.STATES)


# -- failures ------------------------------------------------------------------------------------------------------

def test_build_failure_leaves_the_module_eager() -> None:
    net = Net().eval()
    m = ait.Module(net, strategy=fake(fail_build=True))
    ait.tune(m, [torch.randn(2, 16)])
    rt = rt_of(m)
    assert rt.state == "passthrough"
    assert sig_of(m).status == "eager" and "cannot build this" in (sig_of(m).reason or "")
    x = torch.randn(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(m(x), net(x))


def test_strict_mode_raises_on_build_failure() -> None:
    global_config.strict = True
    m = ait.Module(Net().eval(), strategy=fake(fail_build=True))
    with pytest.raises(ait.TuningError, match="cannot build this"):
        ait.tune(m, [torch.randn(2, 16)])
    rt = rt_of(m)
    assert rt.state == "passthrough"


@pytest.mark.parametrize("strict", [False, True])
def test_engine_failing_at_run_time(strict: bool, caplog: pytest.LogCaptureFixture) -> None:
    net = Net().eval()
    m = ait.Module(net, strategy=fake())
    ait.tune(m, [torch.randn(2, 16)])
    sig_of(m).engine.cfg = FakeConfig(fail_run=True)  # accepted when tuned, broken now
    global_config.strict = strict
    x = torch.randn(2, 16)
    with torch.no_grad():
        if strict:
            with pytest.raises(RuntimeError, match="engine exploded"):
                m(x)
            return
        with caplog.at_level(logging.WARNING, logger="aitune"):
            torch.testing.assert_close(m(x), net(x))
            torch.testing.assert_close(m(x), net(x))
    assert caplog.text.count("engine exploded") == 1 and "AITUNE_STRICT" in caplog.text
    assert sig_of(m).engine is None and sig_of(m).status == "eager"


def test_strict_failure_leaves_the_other_wrappers_as_they_were() -> None:
    global_config.strict = True
    first = ait.Module(Block(16).eval(), "first", strategy=fake(fail_build=True))
    second = ait.Module(Block(16).eval(), "second", strategy=eager())
    with pytest.raises(ait.TuningError):
        ait.tune(func=lambda x: second(first(x)), dataset=[torch.randn(2, 16)])
    assert rt_of(first).state == rt_of(second).state == "passthrough"
    assert sig_of(second).samples == [] and sig_of(second).engine is None


def test_copies_and_pickles_rewrap_the_copied_module() -> None:
    parent = Parent().eval()
    parent.block = ait.Module(parent.block, "block", strategy=eager())
    ait.tune(parent, [torch.randn(2, 16)])
    x = torch.randn(2, 16)
    for twin in (copy.deepcopy(parent), pickle.loads(pickle.dumps(parent))):
        assert rt_of(twin.block).name == "block" and rt_of(twin.block).state == "passthrough"
        assert twin.block.__wrapped__ is not parent.block.__wrapped__
        with torch.no_grad():
            torch.testing.assert_close(twin(x), parent(x))


def test_clear_errors() -> None:
    with pytest.raises(ait.UsageError, match=r"ait\.Module\(model\)"):
        ait.tune(Net().eval(), [torch.randn(2, 16)])
    m = ait.Module(Net().eval())
    with pytest.raises(ait.UsageError, match="empty dataset"):
        ait.tune(m, [])
    rt = rt_of(m)
    assert rt.state == "passthrough"
    with pytest.raises(ait.UsageError, match="needs a dataset"):
        ait.tune(m)
    pipe = Pipeline()
    with pytest.raises(ait.UsageError, match="has no 'nope'; it has: 0, 1") as info:
        ait.wrap(pipe, ["unet.nope"])
    assert info.value.available == ["0", "1"]
    with pytest.raises(ait.UsageError, match="text_encoder, unet, heads, unused"):
        ait.wrap(pipe, {"vae": None})
    assert runtime_of(pipe.unet) is None  # nothing changed


# -- ait.inspect and ait.wrap --------------------------------------------------------------------------------------

def _hooks(module: torch.nn.Module) -> list[int]:
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules()]


def test_inspect_get_modules_wrap_round_trip() -> None:
    pipe = Pipeline()
    sd = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    dataset = [torch.randn(2, 16) for _ in range(2)]
    result = ait.inspect(pipe, dataset)
    assert isinstance(result, ait.InspectResult)
    rows = {info.path: info for info in result.modules}
    assert list(rows) == ["text_encoder", "unet", "heads.0", "unused"]
    assert rows["unet"].calls == 4 and rows["text_encoder"].calls == 2 and rows["unused"].calls == 0
    assert rows["unet"].signatures == 1 and rows["unet"].parameters == 2 * (16 * 16 + 16)
    assert 0 < rows["unet"].share <= 1
    table = result.describe()
    assert "unet" in table and "torch.nn.modules.container.Sequential" in table and "2 input(s)" in table
    assert all(n == 0 for m in (pipe.text_encoder, pipe.unet, pipe.unused) for n in _hooks(m))
    assert all(torch.equal(sd[k], v) for k, v in pipe.unet.state_dict().items())

    chosen = result.get_modules(min_share=0.0)
    assert [c.path for c in chosen] == ["text_encoder", "unet", "heads.0"]
    assert ait.wrap(pipe, chosen) is pipe
    assert [rt_of(o).name for o in (pipe.text_encoder, pipe.unet, pipe.heads[0])] == ["text_encoder", "unet", "heads.0"]
    assert runtime_of(pipe.unused) is None
    unet = pipe.unet
    ait.wrap(pipe, ["unet"])  # already wrapped: no-op
    assert pipe.unet is unet
    x = torch.randn(2, 16)
    with torch.no_grad():
        want = Pipeline.__call__(_eager_twin(pipe), x)
    ait.tune(pipe, dataset, strategy=eager())
    assert all(rt_of(o).state == "tuned" for o in (pipe.text_encoder, pipe.unet, pipe.heads[0]))
    with torch.no_grad():
        torch.testing.assert_close(pipe(x), want, **TOL)


def test_inspect_a_model_leaves_it_unchanged_and_wrap_by_path() -> None:
    net = Net().eval()
    hooks = _hooks(net)
    result = ait.inspect(net, [(torch.randn(2, 16),), (torch.randn(5, 16), 2.0)])
    assert _hooks(net) == hooks and all(n == 0 for n in hooks)
    rows = {info.path: info for info in result.modules}
    assert list(rows) == ["", "blocks", "head"] and rows[""].name == "Net"
    assert rows[""].calls == 2 and rows[""].signatures == 2 and rows["head"].signatures == 1
    assert [c.path for c in result.get_modules(min_share=0.0)] == [""]
    wrapped = ait.wrap(net, {"blocks.1": eager(), "head": None})
    assert wrapped is net and runtime_of(net.blocks[1]) is not None and runtime_of(net.head) is not None
    assert rt_of(net.blocks[1]).strategy is not None and rt_of(net.head).strategy is None
    root = ait.wrap(net, result.get_modules(min_share=0.0))
    assert runtime_of(root) is not None and root.__wrapped__ is net
