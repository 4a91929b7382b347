"""Torch-TensorRT backends: what runs without torch_tensorrt (settings, option mapping, input ranges, the flat
adapter and engine glue on CPU, the missing-library paths), and GPU tests that need torch_tensorrt and CUDA."""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from aitune.torch._errors import BackendUnavailableError
from aitune.torch.backend import _optional
from aitune.torch.backend._flat import FlatIO, FlatModule
from aitune.torch.backend._torch_tensorrt import (
    InputRange,
    TorchTensorRTAotBackend,
    TorchTensorRTAotBackendConfig,
    TorchTensorRTConfig,
    TorchTensorRTJitBackend,
    TorchTensorRTJitBackendConfig,
    _TorchTensorRTEngine,
    compile_options,
    export_flat,
    frontend_options,
    input_ranges,
)

from .helpers import KwargsNet, Net, assert_same_structured, kwargs_calls, record

CPU = torch.device("cpu")
INSTALL_HINT = "pip install 'aitune[torch-tensorrt]'"


@dataclasses.dataclass
class FakeCompilationSettings:
    """Stands in for torch_tensorrt.dynamo.CompilationSettings at the seam: a dataclass of settings whose values
    are not all JSON (sets of dtypes, an object standing in for torch_tensorrt.Device)."""

    enabled_precisions: set[torch.dtype] = dataclasses.field(default_factory=lambda: {torch.float32})
    min_block_size: int = 5
    device: Any = dataclasses.field(default_factory=lambda: types.SimpleNamespace(gpu_id=0))
    use_python_runtime: bool | None = False


# --- settings ---------------------------------------------------------------------------------------------------

def test_precision_names_map_to_dtypes() -> None:
    cfg = TorchTensorRTConfig(enabled_precisions=["fp16", "float32", torch.bfloat16, "half", "FP8", "int8"])
    assert cfg.enabled_precisions == ("fp16", "fp32", "bf16", "fp8", "int8")
    assert cfg.to_options()["enabled_precisions"] == {torch.float16, torch.float32, torch.bfloat16,
                                                      torch.float8_e4m3fn, torch.int8}
    assert TorchTensorRTConfig(enabled_precisions="fp16").enabled_precisions == ("fp16",)
    with pytest.raises(ValidationError, match="unknown precision 'fp64'"):
        TorchTensorRTConfig(enabled_precisions=["fp64"])
    with pytest.raises(ValidationError, match="empty"):
        TorchTensorRTConfig(enabled_precisions=[])


def test_defaults_mirror_torch_tensorrt() -> None:
    cfg = TorchTensorRTConfig()
    assert (cfg.enabled_precisions, cfg.workspace_size, cfg.min_block_size, cfg.torch_executed_ops) == (
        ("fp32",), 0, 5, ())
    assert (cfg.optimization_level, cfg.truncate_double, cfg.use_python_runtime, cfg.use_fast_partitioner) == (
        None, False, False, True)
    assert (cfg.require_full_compilation, cfg.debug, cfg.immutable_weights, cfg.cache_built_engines,
            cfg.reuse_cached_engines, cfg.pass_through_build_failures) == (False, False, True, False, False, False)
    assert all(field.description for field in TorchTensorRTConfig.model_fields.values())
    assert all(field.description for field in TorchTensorRTJitBackendConfig.model_fields.values())
    assert all(field.description for field in TorchTensorRTAotBackendConfig.model_fields.values())


def test_to_options_holds_only_what_was_set() -> None:
    assert TorchTensorRTConfig().to_options() == {}
    cfg = TorchTensorRTConfig(min_block_size=1, truncate_long_and_double=True, use_python_runtime=False,
                              torch_executed_ops=["torch.ops.aten.add.Tensor"],
                              extra_options={"sparse_weights": True})
    # A value set to its default is still sent: the user asked for it.
    assert cfg.to_options() == {"min_block_size": 1, "truncate_double": True, "use_python_runtime": False,
                                "torch_executed_ops": {"torch.ops.aten.add.Tensor"}, "sparse_weights": True}


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValidationError, match="extra_forbidden|Extra inputs"):
        TorchTensorRTConfig(min_blocksize=1)
    with pytest.raises(ValidationError):
        TorchTensorRTConfig(optimization_level=6)
    with pytest.raises(ValidationError, match="repeats the field"):
        TorchTensorRTConfig(extra_options={"min_block_size": 1})
    with pytest.raises(ValidationError):
        TorchTensorRTAotBackendConfig(ir="onnx")
    with pytest.raises(ValidationError, match="compile_config must be"):
        TorchTensorRTJitBackend(compile_config=42)
    with pytest.raises(ValidationError, match="extra_forbidden|Extra inputs"):
        TorchTensorRTJitBackend(compile_config={"bogus": 1})


def test_compile_config_from_a_dict_and_describe() -> None:
    backend = TorchTensorRTAotBackend(compile_config={"enabled_precisions": ["fp16"], "min_block_size": 1})
    assert isinstance(backend.config.compile_config, TorchTensorRTConfig)
    assert backend.describe() == ("TorchTensorRTAotBackend(compile_config=TorchTensorRTConfig("
                                  "enabled_precisions=['fp16'], min_block_size=1))")
    assert TorchTensorRTJitBackend().describe() == "TorchTensorRTJitBackend"
    json.dumps(backend.engine_settings())


def test_compilation_settings_object_is_accepted() -> None:
    settings = FakeCompilationSettings(enabled_precisions={torch.float16, torch.float32}, min_block_size=1)
    backend = TorchTensorRTJitBackend(compile_config=settings, dynamic_shapes=False)
    assert backend.config.compile_config is settings
    # Every field becomes an option, as torch_tensorrt's own parsing of torch.compile options expects.
    assert compile_options(settings) == dataclasses.asdict(settings) | {"device": settings.device}
    # The cache key and the report stay JSON: the class and the fields that differ from a fresh instance.
    summary = backend.engine_settings()["compile_config"]
    assert summary == {"settings_class": f"{__name__}.FakeCompilationSettings",
                       "enabled_precisions": ["torch.float16", "torch.float32"], "min_block_size": 1}
    json.dumps(backend.engine_settings())
    assert "min_block_size" in backend.describe()


# --- availability -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [TorchTensorRTJitBackend, TorchTensorRTAotBackend])
def test_missing_library_gives_the_install_command(monkeypatch: pytest.MonkeyPatch, cls: type) -> None:
    monkeypatch.setattr(_optional, "installed", lambda name: name != "torch_tensorrt")
    reason = cls.unavailable_reason()
    assert reason is not None and INSTALL_HINT in reason and cls.__name__ in reason
    assert cls.extra == "torch-tensorrt"
    net = Net()
    sig, samples = record(net, [((torch.randn(2, 16),), {})])
    with pytest.raises(BackendUnavailableError, match=r"pip install 'aitune\[torch-tensorrt\]'"):
        cls().build(net, sig, samples, torch.device("cuda"))


@pytest.mark.parametrize("cls", [TorchTensorRTJitBackend, TorchTensorRTAotBackend])
def test_cpu_is_not_supported(cls: type) -> None:
    reason = cls().unsupported_reason(CPU)
    assert reason is not None and "'cpu'" in reason and "cuda" in reason
    assert cls().unsupported_reason(torch.device("cuda", 0)) is None
    assert cls.kind == ("jit" if cls is TorchTensorRTJitBackend else "aot")


# --- input ranges -----------------------------------------------------------------------------------------------

def test_input_ranges_span_the_samples_and_prefer_the_most_common_shapes() -> None:
    net = KwargsNet().eval()
    sig, samples = record(net, kwargs_calls([(2, 5), (4, 5), (4, 5), (8, 5), (8, 5), (8, 5)]))
    sig.shape_counts.clear()  # this signature's calls: mostly batch 2, beyond the stored samples
    sig.observe(((2, 5), (2, 5, 8), (2, 5)))
    sig.observe(((2, 5), (2, 5, 8), (2, 5)))
    io = FlatIO.from_samples(samples)
    ranges = input_ranges(io, sig.most_common_shapes)
    assert ranges == [InputRange((2, 5), (2, 5), (8, 5), torch.int64),
                      InputRange((2, 5, 8), (2, 5, 8), (8, 5, 8), torch.float32),
                      InputRange((2, 5), (2, 5), (8, 5), torch.float32)]
    # Without the signature's counts (or when they fall outside the samples' range): the samples' most common.
    assert [r.opt_shape for r in input_ranges(io)] == [(8, 5), (8, 5, 8), (8, 5)]
    assert [r.opt_shape for r in input_ranges(io, [(16, 5), (16, 5, 8), (16, 5)])] == [(8, 5), (8, 5, 8), (8, 5)]
    assert [r.opt_shape for r in input_ranges(io, [(4, 5)])] == [(8, 5), (8, 5, 8), (8, 5)]


def test_static_inputs_have_equal_min_and_max() -> None:
    net = Net(width=16)
    _, samples = record(net, [((torch.randn(4, 16),), {}) for _ in range(3)])
    (r,) = input_ranges(FlatIO.from_samples(samples))
    assert r.min_shape == r.opt_shape == r.max_shape == (4, 16) and r.dtype == torch.float32


# --- adapter and engine glue (CPU, no Torch-TensorRT) -----------------------------------------------------------

def test_adapter_round_trip_matches_the_module() -> None:
    net = KwargsNet().eval()
    _, samples = record(net, kwargs_calls([(2, 5), (4, 7)]))
    io = FlatIO.from_samples(samples)
    adapter = FlatModule(net, io)
    (call,) = kwargs_calls([(3, 6)])
    with torch.no_grad():
        flat_out = adapter(*io.flatten(*call))
        want = net(*call[0], **call[1])
    assert isinstance(flat_out, tuple) and len(flat_out) == 2
    assert_same_structured(io.unflatten_outputs(list(flat_out)), want)


def test_engine_glue_rebuilds_the_eager_structure() -> None:
    """The engine around a stand-in for the compiled module (the adapter itself, run eagerly)."""
    net = KwargsNet().eval()
    _, samples = record(net, kwargs_calls([(2, 5), (4, 7)]))
    io = FlatIO.from_samples(samples)
    ranges = input_ranges(io)
    engine = _TorchTensorRTEngine(FlatModule(net, io), io, "dynamo", ranges, CPU, 2)
    assert engine.bakes_weights
    (call,) = kwargs_calls([(3, 6)])
    with torch.no_grad():
        assert_same_structured(engine(*call[0], **call[1]), net(*call[0], **call[1]))
    # A single-tensor output comes back as a tensor, not a tuple.
    single = Net(width=16).eval()
    _, single_samples = record(single, [((torch.randn(2, 16),), {})])
    single_io = FlatIO.from_samples(single_samples)
    single_engine = _TorchTensorRTEngine(lambda x: single(x), single_io, "dynamo", input_ranges(single_io), CPU, 2)
    x = torch.randn(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(single_engine(x), single(x))


def test_fx_engines_refuse_to_save(tmp_path: Path) -> None:
    net = Net(width=16)
    _, samples = record(net, [((torch.randn(2, 16),), {})])
    io = FlatIO.from_samples(samples)
    engine = _TorchTensorRTEngine(net, io, "fx", input_ranges(io), CPU, 2)
    with pytest.raises(NotImplementedError, match="ir='dynamo' or 'ts'"):
        engine.save(tmp_path)


def test_export_flat_is_dynamic_over_the_recorded_range() -> None:
    """What ir='dynamo' hands to torch_tensorrt.compile: the exported adapter, dynamic where samples varied."""
    net = KwargsNet().eval()
    _, samples = record(net, kwargs_calls([(2, 5), (4, 7), (4, 7)]))
    io = FlatIO.from_samples(samples)
    ranges = input_ranges(io)
    with torch.no_grad():
        program = export_flat(net, io, tuple(io.flatten(samples[1].args, samples[1].kwargs)), ranges)
        (call,) = kwargs_calls([(3, 6)])
        out = program.module()(*io.flatten(*call))
        want = net(*call[0], **call[1])
    assert_same_structured(io.unflatten_outputs(list(out)), want)
    bounds = sorted((int(r.lower), int(r.upper)) for r in program.range_constraints.values())
    assert bounds == [(2, 4), (5, 7)]  # batch and sequence, each shared by the three inputs


def test_frontend_options_per_ir() -> None:
    def ts_compile(module: Any, inputs: Any = None, device: Any = None, enabled_precisions: Any = None,
                   min_block_size: int = 3, truncate_long_and_double: bool = False) -> Any:
        return module

    trt = types.SimpleNamespace(ts=types.SimpleNamespace(compile=ts_compile))
    options = TorchTensorRTConfig(enabled_precisions=["fp16"], min_block_size=2, truncate_double=True,
                                  use_fast_partitioner=False).to_options()
    assert frontend_options(trt, "dynamo", options) == options
    assert frontend_options(trt, "ts", options) == {"enabled_precisions": {torch.float16}, "min_block_size": 2,
                                                    "truncate_long_and_double": True}
    assert frontend_options(trt, "fx", options) == {"enabled_precisions": {torch.float16}}


# --- real execution: torch_tensorrt and a CUDA GPU --------------------------------------------------------------

needs_torch_tensorrt = pytest.mark.skipif(not _optional.installed("torch_tensorrt"),
                                          reason=f"needs torch_tensorrt ({INSTALL_HINT})")


def _cuda_fp16_net() -> tuple[torch.nn.Module, Any, list[Any]]:
    net = Net(width=64, depth=3).eval().half().cuda()
    sig, samples = record(net, [((torch.randn(b, 64, device="cuda", dtype=torch.float16),), {}) for b in (2, 4, 8)])
    return net, sig, samples


def _check(engine: Any, net: torch.nn.Module) -> None:
    for batch in (2, 5, 8):
        x = torch.randn(batch, 64, device="cuda", dtype=torch.float16)
        with torch.no_grad():
            torch.testing.assert_close(engine(x), net(x), rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_torch_tensorrt
def test_jit_backend_matches_eager_on_cuda() -> None:
    net, sig, samples = _cuda_fp16_net()
    backend = TorchTensorRTJitBackend(compile_config=TorchTensorRTConfig(enabled_precisions=["fp16"],
                                                                          min_block_size=1))
    _check(backend.build(net, sig, samples, torch.device("cuda")), net)


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_torch_tensorrt
@pytest.mark.parametrize("ir", ["dynamo", "ts"])
def test_aot_backend_matches_eager_and_round_trips(tmp_path: Path, ir: str) -> None:
    if ir == "ts":
        import torch_tensorrt

        if not torch_tensorrt.ENABLED_FEATURES.torchscript_frontend:
            pytest.skip("this torch_tensorrt build has no TorchScript frontend")
    net, sig, samples = _cuda_fp16_net()
    backend = TorchTensorRTAotBackend(ir=ir, compile_config=TorchTensorRTConfig(enabled_precisions=["fp16"],
                                                                               min_block_size=1))
    engine = backend.build(net, sig, samples, torch.device("cuda"))
    _check(engine, net)
    engine.save(tmp_path)
    engine.release()
    loaded = backend.load(tmp_path, net, sig, samples, torch.device("cuda"))
    _check(loaded, net)
    with pytest.raises(ValueError, match="configured for ir="):
        TorchTensorRTAotBackend(ir="ts" if ir == "dynamo" else "dynamo").load(tmp_path, net, sig, samples,
                                                                              torch.device("cuda"))
