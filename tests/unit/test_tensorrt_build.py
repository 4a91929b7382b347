"""TensorRTBackend: the build half for real, the run half at its seam, and GPU execution where TensorRT runs.

- Build tests use the installed TensorRT library (`tensorrt`, else `tensorrt_rtx`, which builds on a CPU-only
  machine) and are skipped, with the reason, when neither imports.
- Runtime tests drive `TensorRTEngine` with a fake execution context that reads and writes the bound memory
  by address. They prove aitune's own logic (profile choice, binding of shapes/addresses/outputs, eager fallback,
  CUDA graph keying and eviction, output clones); they prove nothing about TensorRT or CUDA semantics.
- Execution tests (markers `tensorrt`, `gpu`) build and run engines end to end; they need the full `tensorrt`
  package and a CUDA GPU (TensorRT-RTX cannot run engines on the Hopper GPUs this project has).
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from aitune.torch._errors import BackendUnavailableError, TensorRTBuildError
from aitune.torch.backend import _optional
from aitune.torch.backend import _tensorrt_runtime as rt
from aitune.torch.backend._flat import FlatIO
from aitune.torch.backend._onnx import export_onnx
from aitune.torch.backend._tensorrt import (
    TensorRTBackend,
    TensorRTBackendConfig,
    build_plan,
    configure_builder,
    parse_onnx,
    tensorrt_library,
    trt_logger,
)
from aitune.torch.backend._tensorrt_profiles import ProfileMode, TensorRTProfile, derive_profiles
from aitune.torch.backend._tensorrt_runtime import EngineMeta, TensorRTEngine

from .helpers import Net, record


@pytest.fixture(scope="module")
def trt() -> Any:
    try:
        return tensorrt_library()
    except BackendUnavailableError as e:
        pytest.skip(f"neither tensorrt nor tensorrt_rtx imports: {e}")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FlatIO, list]:
    """Net exported with a dynamic batch (TorchScript exporter: fast on a small CPU)."""
    net = Net(width=16).eval()
    _, samples = record(net, [((torch.randn(b, 16),), {}) for b in (2, 4, 4, 8)])
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return path, export_onnx(net, samples, path, use_dynamo=False), samples


# --- the build half, for real ---------------------------------------------------------------------------------


def test_parse_gives_the_flat_input_names_with_a_dynamic_batch(trt: Any, exported: tuple) -> None:
    path, io, _ = exported
    parsed = parse_onnx(trt, path)
    assert parsed.input_names == io.input_names == ["args_0"]
    assert parsed.output_names == io.output_names == ["output_0"]
    assert tuple(parsed.network.get_input(0).shape) == (-1, 16)


@pytest.mark.parametrize("mode", list(ProfileMode))
def test_build_with_derived_profiles(trt: Any, exported: tuple, mode: ProfileMode,
                                     caplog: pytest.LogCaptureFixture) -> None:
    path, io, samples = exported
    caplog.set_level(logging.INFO, logger="aitune.torch.backend._tensorrt")
    result = build_plan(path, derive_profiles(mode, io, samples), TensorRTBackendConfig(optimization_level=0), trt)
    assert len(result.plan) > 1000
    expected = {ProfileMode.SINGLE: [((2, 16), (4, 16), (8, 16))],
                ProfileMode.SAMPLES_USED: [((b, 16),) * 3 for b in (2, 4, 8)]}[mode]
    assert [p.shapes["args_0"] for p in result.profiles] == expected
    logged = [r.getMessage() for r in caplog.records if "optimization profile" in r.getMessage()]
    assert logged[0] == f"TensorRT optimization profile 0: args_0 min {list(expected[0][0])} opt " \
                        f"{list(expected[0][1])} max {list(expected[0][2])}"
    assert len(logged) == len(expected)


def test_build_with_explicit_profiles_and_a_dynamo_export(trt: Any, tmp_path: Path) -> None:
    net = Net(width=8).eval()
    _, samples = record(net, [((torch.randn(b, 8),), {}) for b in (1, 3)])
    io = export_onnx(net, samples, tmp_path / "m.onnx", use_dynamo=True)
    profiles = [TensorRTProfile().add_input_shape("args_0", (1, 8), (2, 8), (4, 8)),
                TensorRTProfile().add_input_shape("args_0", (5, 8), (16, 8), (32, 8))]
    result = build_plan(tmp_path / "m.onnx", derive_profiles(profiles, io), TensorRTBackendConfig(), trt)
    assert len(result.plan) > 1000 and result.profiles == profiles and result.input_names == ["args_0"]


def test_profiles_that_do_not_fit_the_network_are_rejected(trt: Any, exported: tuple) -> None:
    path, _, _ = exported
    wrong_width = TensorRTProfile().add_input_shape("args_0", (1, 8), (2, 8), (4, 8))
    with pytest.raises(TensorRTBuildError, match=r"do not fit the network's shape \[-1, 16\]"):
        build_plan(path, [wrong_width], TensorRTBackendConfig(), trt)
    with pytest.raises(TensorRTBuildError, match="no shape for network input 'args_0'"):
        build_plan(path, [TensorRTProfile().add_input_shape("other", (1,), (1,), (1,))], TensorRTBackendConfig(), trt)


def test_timing_cache_is_written_then_read_back(trt: Any, exported: tuple, tmp_path: Path) -> None:
    path, io, samples = exported
    cache = tmp_path / "caches" / "trt.cache"
    config = TensorRTBackendConfig(timing_cache=cache, optimization_level=0)
    first = build_plan(path, derive_profiles(ProfileMode.SINGLE, io), config, trt)
    assert not first.timing_cache_loaded
    assert cache.is_file() and cache.stat().st_size > 0
    assert [p.name for p in cache.parent.iterdir()] == ["trt.cache"]  # no temporary file left behind
    second = build_plan(path, derive_profiles(ProfileMode.SINGLE, io), config, trt)
    assert second.timing_cache_loaded and cache.is_file()


def test_parser_errors_are_reported_with_the_parsers_message(trt: Any, tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("args_0", TensorProto.FLOAT, ["b", 4])
    y = helper.make_tensor_value_info("output_0", TensorProto.FLOAT, ["b", 4])
    nodes = [helper.make_node("Relu", ["args_0"], ["t"]),
             helper.make_node("FrobnicateTensor", ["t"], ["output_0"], domain="aitune.test")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("aitune.test", 1)])
    onnx.save(model, str(tmp_path / "unknown_op.onnx"))
    with pytest.raises(TensorRTBuildError, match=r"could not parse unknown_op.onnx: .*FrobnicateTensor"):
        parse_onnx(trt, tmp_path / "unknown_op.onnx")
    (tmp_path / "truncated.onnx").write_bytes(model.SerializeToString()[:40])
    with pytest.raises(TensorRTBuildError, match="could not parse truncated.onnx: .+"):
        parse_onnx(trt, tmp_path / "truncated.onnx")


def test_builder_settings_land_in_the_builder_config(trt: Any, exported: tuple) -> None:
    path, _, _ = exported
    parsed = parse_onnx(trt, path)
    config = configure_builder(trt, parsed, TensorRTBackendConfig(workspace_size=1 << 28, optimization_level=2,
                                                                  enable_tf32=False))
    assert config.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE) == 1 << 28
    assert config.builder_optimization_level == 2
    assert not config.get_flag(trt.BuilderFlag.TF32)
    assert configure_builder(trt, parsed, TensorRTBackendConfig()).get_flag(trt.BuilderFlag.TF32)


def test_onnx_autocast_then_build(trt: Any, exported: tuple, tmp_path: Path) -> None:
    pytest.importorskip("modelopt.onnx.autocast", reason="needs nvidia-modelopt with its ONNX extras")
    import onnx
    import onnxruntime as ort

    from aitune.torch.backend._quantization import ONNXAutoCastConfig, autocast_onnx

    path, io, samples = exported
    out = autocast_onnx(path, tmp_path / "fp16.onnx", ONNXAutoCastConfig(precision="fp16"), io, samples)
    model = onnx.load(str(out))
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)
    x = torch.randn(5, 16)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"args_0": x.numpy()})[0]
    fp32 = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"args_0": x.numpy()})[0]
    assert got.dtype == np.float32  # keep_io_types: fp32 in and out, fp16 inside
    np.testing.assert_allclose(got, fp32, rtol=1e-2, atol=1e-2)
    assert len(build_plan(out, derive_profiles(ProfileMode.SINGLE, io), TensorRTBackendConfig(), trt).plan) > 1000


def test_modelopt_quantized_graphs_build(trt: Any, exported: tuple, tmp_path: Path) -> None:
    pytest.importorskip("modelopt.onnx.quantization", reason="needs nvidia-modelopt with its ONNX extras")
    import onnx

    from aitune.torch.backend._quantization import ONNXQuantizationConfig, TorchQuantizationConfig, quantize_onnx
    from aitune.torch.backend._tensorrt import quantize_and_export

    path, io, samples = exported
    int8 = quantize_onnx(path, tmp_path / "int8.onnx", ONNXQuantizationConfig(
        precision="int8", calibration_method="max", calibration_eps=["cpu"], high_precision_dtype="fp32"), io, samples)
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert len(build_plan(int8, derive_profiles(ProfileMode.SINGLE, io), TensorRTBackendConfig(), trt).plan) > 1000
    net = Net(width=16).eval()
    _, samples = record(net, [((torch.randn(b, 16),), {}) for b in (2, 4)])
    io = quantize_and_export(net, samples, tmp_path / "torch_int8.onnx", TorchQuantizationConfig(
        quantization_config="INT8_DEFAULT_CFG", device="cpu"), use_dynamo=False, opset_version=None)
    assert type(net.head) is torch.nn.Linear  # the user's module is not quantized in place
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(tmp_path / "torch_int8.onnx")).graph.node}
    plan = build_plan(tmp_path / "torch_int8.onnx", derive_profiles(ProfileMode.SINGLE, io), TensorRTBackendConfig(),
                      trt).plan
    assert len(plan) > 1000


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens without a GPU")
def test_without_a_gpu_the_plan_cannot_be_deserialized(trt: Any, exported: tuple) -> None:
    # Found on the CPU-only machines: the runtime needs a CUDA driver, so IO names and profile shapes of the
    # engine itself can only be checked on a GPU (see the execution tests below).
    path, io, _ = exported
    result = build_plan(path, derive_profiles(ProfileMode.SINGLE, io), TensorRTBackendConfig(), trt)
    assert trt.Runtime(trt_logger(trt)).deserialize_cuda_engine(result.plan) is None


def test_load_refuses_a_plan_of_another_library(trt: Any, tmp_path: Path) -> None:
    other = "tensorrt_rtx" if trt.__name__ == "tensorrt" else "tensorrt"
    meta = EngineMeta(other, "1.0", ["args_0"], ["output_0"], [])
    (tmp_path / rt.PLAN_FILE).write_bytes(b"plan")
    (tmp_path / rt.META_FILE).write_text(meta.to_json())
    net = Net().eval()
    with pytest.raises(RuntimeError, match=f"built by {other} 1.0.*rebuild it"):
        TensorRTBackend().load(tmp_path, net, *record(net, [((torch.randn(1, 16),), {})]), torch.device("cuda"))
    with pytest.raises(FileNotFoundError, match="engine.plan"):
        TensorRTBackend().load(tmp_path / "missing", net, *record(net, [((torch.randn(1, 16),), {})]),
                               torch.device("cuda"))


# --- the run half at its seam (fake TensorRT, CPU memory) ------------------------------------------------------


def _array(address: int, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape)) if shape else 1
    return np.ctypeslib.as_array((ctypes.c_float * count).from_address(address)).reshape(shape)


class _DType:
    name = "FLOAT"


class FakeContext:
    """Stands in for IExecutionContext: `output_0 = 2 * args_0 + 1`, computed through the bound addresses."""

    def __init__(self) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.profile_switches: list[int] = []
        self.executions = 0
        self.capturing: FakeGraph | None = None

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        self.profile_switches.append(index)
        return True

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes["args_0"]

    def run(self, shapes: dict[str, tuple[int, ...]], addresses: dict[str, int]) -> None:
        self.executions += 1
        x = _array(addresses["args_0"], shapes["args_0"])
        _array(addresses["output_0"], shapes["args_0"])[...] = 2 * x + 1

    def execute_async_v3(self, stream: int) -> bool:
        if self.capturing is not None:  # recorded, not run, as in a CUDA graph capture
            self.capturing.recorded = (dict(self.shapes), dict(self.addresses))
        else:
            self.run(self.shapes, self.addresses)
        return True


class FakeGraph:
    def __init__(self, ctx: FakeContext) -> None:
        self.ctx = ctx
        self.recorded: tuple[dict, dict] | None = None
        self.replays = 0

    def replay(self) -> None:
        assert self.recorded is not None
        self.replays += 1
        self.ctx.run(*self.recorded)


class FakeEngine:
    def __init__(self) -> None:
        self.context = FakeContext()

    def get_tensor_dtype(self, name: str) -> _DType:
        return _DType()

    def create_execution_context(self) -> FakeContext:
        return self.context


class AffineNet(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x + 1


class GraphSeamEngine(TensorRTEngine):
    """The engine with its two CUDA graph seams replaced by the fake graph."""

    fail_capture = False

    def _new_graph(self) -> FakeGraph:
        if self.fail_capture:
            raise RuntimeError("operation not permitted when stream is capturing")
        graph = FakeGraph(self._context)
        self.graphs_made.append(graph)
        return graph

    def _capturing(self, graph: Any) -> Any:
        ctx = self._context

        class _Capture:
            def __enter__(self) -> None:
                ctx.capturing = graph

            def __exit__(self, *exc: object) -> None:
                ctx.capturing = None

        return _Capture()


def _engine(profiles: list[TensorRTProfile], graphs: bool = False) -> tuple[TensorRTEngine, FakeContext, AffineNet]:
    net = AffineNet()
    _, samples = record(net, [((torch.randn(2, 3),), {})])
    meta = EngineMeta("tensorrt", "test", ["args_0"], ["output_0"], profiles)
    fake = FakeEngine()
    cls = GraphSeamEngine if graphs else TensorRTEngine
    engine = cls(fake, FlatIO.from_samples(samples, net.forward), meta, torch.device("cpu"), net,
                 use_cuda_graphs=graphs)
    engine.graphs_made = []  # type: ignore[attr-defined]
    return engine, fake.context, net


TWO_PROFILES = [TensorRTProfile().add_input_shape("args_0", (1, 3), (2, 3), (4, 3)),
                TensorRTProfile().add_input_shape("args_0", (5, 3), (6, 3), (8, 3))]


def test_engine_picks_the_profile_and_binds_inputs_and_outputs_by_address() -> None:
    engine, ctx, _ = _engine(TWO_PROFILES)
    x = torch.randn(3, 3)
    torch.testing.assert_close(engine(x), 2 * x + 1)
    assert ctx.profile_switches == []  # profile 0 is active from the start
    wide = torch.randn(3, 6)
    x = wide.t()  # (6, 3), not contiguous: bound through a contiguous copy
    torch.testing.assert_close(engine(x), 2 * x + 1)
    assert ctx.profile_switches == [1] and ctx.executions == 2
    engine(torch.randn(7, 3))
    engine(torch.randn(1, 3))
    assert ctx.profile_switches == [1, 0]


def test_shapes_outside_every_profile_run_eagerly_and_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    engine, ctx, net = _engine(TWO_PROFILES)
    caplog.set_level(logging.INFO, logger=rt.__name__)
    for batch in (9, 12):
        x = torch.randn(batch, 3)
        torch.testing.assert_close(engine(x), net(x))
    assert ctx.executions == 0
    messages = [r.getMessage() for r in caplog.records if "outside every optimization profile" in r.getMessage()]
    assert messages == ["TensorRT engine of AffineNet: input shapes [[9, 3]] are outside every optimization "
                        "profile; such calls run eagerly"]
    torch.testing.assert_close(engine(torch.ones(2, 3)), torch.full((2, 3), 3.0))
    assert ctx.executions == 1


def test_cuda_graphs_replay_per_shape_set_and_return_clones() -> None:
    engine, ctx, _ = _engine(TWO_PROFILES, graphs=True)
    a = torch.randn(2, 3)
    out_a = engine(a)
    torch.testing.assert_close(out_a, 2 * a + 1)
    assert len(engine.graphs_made) == 1  # type: ignore[attr-defined]
    b = torch.randn(2, 3)
    out_b = engine(b)  # same shapes: copied into the static input, replayed, no new capture
    torch.testing.assert_close(out_b, 2 * b + 1)
    torch.testing.assert_close(out_a, 2 * a + 1)  # the earlier output was a clone, not the static buffer
    assert len(engine.graphs_made) == 1 and engine.graphs_made[0].replays == 2  # type: ignore[attr-defined]
    c = torch.randn(6, 3)
    torch.testing.assert_close(engine(c), 2 * c + 1)  # a new shape set: re-captured, on profile 1
    assert len(engine.graphs_made) == 2 and ctx.profile_switches == [1]  # type: ignore[attr-defined]
    torch.testing.assert_close(engine(c), 2 * c + 1)
    torch.testing.assert_close(engine(b), 2 * b + 1)  # back to (2, 3): captured again, on profile 0
    assert len(engine.graphs_made) == 3 and ctx.profile_switches == [1, 0]  # type: ignore[attr-defined]
    engine(torch.randn(12, 3))  # outside every profile: eager, the graph stays
    assert len(engine.graphs_made) == 3 and engine._graph is not None  # type: ignore[attr-defined]
    assert (engine.captures, engine.replays) == (3, 5)


def test_cuda_graphs_turn_off_when_shapes_change_more_often_than_they_replay(
        caplog: pytest.LogCaptureFixture) -> None:
    engine, ctx, _ = _engine(TWO_PROFILES, graphs=True)
    caplog.set_level(logging.INFO, logger=rt.__name__)
    for batch in (1, 2, 3, 4, 1, 2, 3):
        x = torch.randn(batch, 3)
        torch.testing.assert_close(engine(x), 2 * x + 1)
    assert engine.captures == rt.CAPTURES_BEFORE_CHECK + 1 and not engine._use_graphs
    assert "input shapes change too often for CUDA graphs (5 captures, 4 replays)" in caplog.text


def test_a_failed_capture_turns_graphs_off(caplog: pytest.LogCaptureFixture) -> None:
    engine, ctx, _ = _engine(TWO_PROFILES, graphs=True)
    engine.fail_capture = True  # type: ignore[attr-defined]
    caplog.set_level(logging.INFO, logger=rt.__name__)
    x = torch.randn(2, 3)
    torch.testing.assert_close(engine(x), 2 * x + 1)
    torch.testing.assert_close(engine(x), 2 * x + 1)
    assert "CUDA graph capture failed (RuntimeError" in caplog.text
    assert caplog.text.count("CUDA graph capture failed") == 1 and not engine._use_graphs


def test_engine_save_writes_the_plan_and_its_metadata(tmp_path: Path) -> None:
    engine, _, _ = _engine(TWO_PROFILES)
    with pytest.raises(RuntimeError, match="no artifact directory"):
        engine.save(tmp_path)
    engine.artifact_dir = tmp_path / "built"
    engine.artifact_dir.mkdir()
    (engine.artifact_dir / rt.PLAN_FILE).write_bytes(b"serialized plan")
    (tmp_path / "saved").mkdir()
    engine.save(tmp_path / "saved")
    assert (tmp_path / "saved" / rt.PLAN_FILE).read_bytes() == b"serialized plan"
    assert EngineMeta.from_json((tmp_path / "saved" / rt.META_FILE).read_text()) == engine.meta
    engine.release()
    assert engine._context is None


def test_engine_refuses_a_signature_it_was_not_built_for() -> None:
    net = AffineNet()
    _, samples = record(net, [((torch.randn(2, 3),), {})])
    meta = EngineMeta("tensorrt", "test", ["input_ids"], ["output_0"], TWO_PROFILES)
    with pytest.raises(ValueError, match=r"the engine takes \['input_ids'\]"):
        TensorRTEngine(FakeEngine(), FlatIO.from_samples(samples, net.forward), meta, torch.device("cpu"), net)


class _CudaArray:
    """Memory at a CUDA address seen as a float32 array (the CUDA array interface), so torch can wrap it."""

    def __init__(self, address: int, shape: tuple[int, ...]) -> None:
        self.__cuda_array_interface__ = {"shape": shape, "typestr": "<f4", "data": (address, False),
                                         "version": 3, "strides": None}


class CudaFakeContext(FakeContext):
    """The fake on GPU memory: its "kernels" are torch ops enqueued on the stream handle it is given, so a wrong
    stream, a wrong address or a missing copy shows up in the results or as a CUDA graph capture error."""

    def __init__(self) -> None:
        super().__init__()
        self.views: dict[str, torch.Tensor] = {}

    def set_tensor_address(self, name: str, address: int) -> bool:
        shape = self.shapes[name] if name in self.shapes else self.shapes["args_0"]
        self.views[name] = torch.as_tensor(_CudaArray(address, shape), device="cuda")
        return super().set_tensor_address(name, address)

    def execute_async_v3(self, stream: int) -> bool:
        self.executions += 1
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            out = self.views["output_0"]
            torch.mul(self.views["args_0"], 2, out=out)
            out.add_(1)
        return True


@pytest.mark.gpu
@pytest.mark.parametrize("use_cuda_graphs", [False, True])
def test_engine_cuda_path_with_a_fake_context(use_cuda_graphs: bool) -> None:
    # Real CUDA streams, allocations and torch.cuda.CUDAGraph capture/replay; only TensorRT is faked.
    device = torch.device("cuda")
    net = AffineNet()
    _, samples = record(net, [((torch.randn(2, 3, device=device),), {})])
    fake = FakeEngine()
    fake.context = CudaFakeContext()
    engine = TensorRTEngine(fake, FlatIO.from_samples(samples, net.forward),
                            EngineMeta("tensorrt", "test", ["args_0"], ["output_0"], TWO_PROFILES), device, net,
                            use_cuda_graphs=use_cuda_graphs)
    side = torch.cuda.Stream()
    kept = []
    with torch.cuda.stream(side):  # callers on a non-default stream get their results in stream order
        for batch in (2, 2, 6, 6, 2, 2, 9, 2, 3):
            x = torch.randn(batch, 3, device=device)
            kept.append((x, engine(x)))
    torch.cuda.synchronize()
    for x, out in kept:
        torch.testing.assert_close(out, 2 * x + 1)
    assert fake.context.profile_switches == [1, 0]
    if use_cuda_graphs:
        assert (engine.captures, engine.replays) == (4, 8)  # 9 ran eagerly


# --- execution on a GPU with the full TensorRT (never runs on this project's machines today) ------------------

needs_tensorrt = pytest.mark.skipif(not _optional.installed("tensorrt"),
                                    reason="needs the full tensorrt package (TensorRT-RTX cannot run on Hopper)")


class ConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_tensorrt
@pytest.mark.parametrize("use_cuda_graphs", [False, True])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_runs_on_cuda_and_round_trips(tmp_path: Path, use_cuda_graphs: bool, precision: str) -> None:
    quant = None
    if precision == "fp16":
        pytest.importorskip("modelopt.onnx.autocast", reason="ONNX AutoCast needs pip install 'aitune[modelopt]'")
        from aitune.torch.backend._quantization import ONNXAutoCastConfig

        quant = ONNXAutoCastConfig(precision="fp16")
    device = torch.device("cuda")
    net = ConvNet().eval().to(device)
    sig, samples = record(net, [((torch.randn(b, 3, 16, 16, device=device),), {}) for b in (1, 4, 8)])
    backend = TensorRTBackend(use_cuda_graphs=use_cuda_graphs, quantization_config=quant,
                              timing_cache=tmp_path / "timing.cache")
    engine = backend.build(net, sig, samples, device)
    tol = {"rtol": 1e-3, "atol": 1e-3} if precision == "fp32" else {"rtol": 2e-2, "atol": 2e-2}
    trt_engine = engine._engine  # type: ignore[attr-defined]
    names = [trt_engine.get_tensor_name(i) for i in range(trt_engine.num_io_tensors)]
    assert names == ["args_0", "output_0"]
    assert [tuple(d) for d in trt_engine.get_tensor_profile_shape("args_0", 0)] == [
        (1, 3, 16, 16), (1, 3, 16, 16), (8, 3, 16, 16)]
    kept = []
    with torch.no_grad():
        for batch in (1, 4, 4, 6, 8, 12):  # 6: unseen but in range; 12: outside the profile (eager)
            x = torch.randn(batch, 3, 16, 16, device=device)
            out = engine(x)
            kept.append((out, net(x)))
    torch.cuda.synchronize()
    for out, want in kept:  # earlier outputs are untouched by later calls (CUDA graph outputs are cloned)
        torch.testing.assert_close(out, want, **tol)
    engine.save(tmp_path)
    assert (tmp_path / "engine.plan").stat().st_size > 0 and (tmp_path / "engine.json").is_file()
    engine.release()
    loaded = backend.load(tmp_path, net, sig, samples, device)
    x = torch.randn(3, 3, 16, 16, device=device)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), **tol)
    assert (tmp_path / "timing.cache").is_file()


def test_calls_from_several_threads_take_turns_on_the_one_context() -> None:
    """The JIT hook routes calls from every thread to one engine; each call binds its own shapes and addresses
    on the shared execution context, so concurrent calls must not interleave."""
    import threading

    engine, ctx, _ = _engine(TWO_PROFILES)
    errors: list[BaseException] = []

    def worker(rows: int) -> None:
        try:
            for _ in range(40):
                x = torch.randn(rows, 3)
                torch.testing.assert_close(engine(x), 2 * x + 1)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(rows,)) for rows in (2, 3, 6, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert ctx.executions == 160
