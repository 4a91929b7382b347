"""TensorRT backend logic that needs no TensorRT: optimization profiles, configs, settings, install hints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from aitune.torch._errors import BackendUnavailableError
from aitune.torch.backend import _optional
from aitune.torch.backend._flat import FlatIO
from aitune.torch.backend._quantization import (
    ONNXAutoCastConfig,
    ONNXQuantizationConfig,
    TorchQuantizationConfig,
    autocast_onnx,
    calibration_arrays,
    describe_quantization,
)
from aitune.torch.backend._tensorrt import TensorRTBackend, TensorRTBackendConfig
from aitune.torch.backend._tensorrt_profiles import ProfileMode, TensorRTProfile, derive_profiles, uncovered_shape_sets
from aitune.torch.backend._tensorrt_runtime import EngineMeta, select_profile

from .helpers import Net, record


class TwoInputs(torch.nn.Module):
    """A batch- and length-dynamic input, a keyword mask, and a bias whose shape never varies."""

    def forward(self, ids: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = ids.float().unsqueeze(-1) + bias
        return out if mask is None else out * mask.unsqueeze(-1)


def _calls(shapes: list[tuple[int, int]]) -> list[tuple[tuple, dict]]:
    return [((torch.zeros(b, s, dtype=torch.long), torch.zeros(4)), {"mask": torch.ones(b, s)}) for b, s in shapes]


@pytest.fixture
def recorded() -> tuple[FlatIO, list]:
    _, samples = record(TwoInputs(), _calls([(2, 8), (4, 8), (2, 8), (1, 16), (4, 8), (2, 8)]))
    return FlatIO.from_samples(samples, TwoInputs().forward), samples


def test_single_profile_spans_the_recorded_range_and_tunes_for_the_most_common_shapes(recorded: tuple) -> None:
    io, samples = recorded
    (profile,) = derive_profiles(ProfileMode.SINGLE, io)
    assert list(profile.shapes) == ["args_0", "args_1", "mask"]
    assert profile.shapes["args_0"] == ((1, 8), (2, 8), (4, 16))
    assert profile.shapes["args_1"] == ((4,), (4,), (4,))  # never varied
    assert profile.shapes["mask"] == ((1, 8), (2, 8), (4, 16))
    assert uncovered_shape_sets([profile], io, samples) == []


def test_samples_used_gives_one_exact_profile_per_distinct_shape_set(recorded: tuple) -> None:
    io, samples = recorded
    profiles = derive_profiles(ProfileMode.SAMPLES_USED, io, samples)
    assert [p.shapes["args_0"][0] for p in profiles] == [(1, 16), (2, 8), (4, 8)]  # three distinct sets, sorted
    for p in profiles:
        for lo, opt, hi in p.shapes.values():
            assert lo == opt == hi
    assert uncovered_shape_sets(profiles, io, samples) == []
    # An in-range shape that was never recorded fits no exact profile: such a call runs eagerly.
    names = ["args_0", "args_1", "mask"]
    assert select_profile(profiles, names, [(3, 8), (4,), (3, 8)]) is None
    assert select_profile(profiles, names, [(4, 8), (4,), (4, 8)]) == 2
    with pytest.raises(ValueError, match="needs the recorded samples"):
        derive_profiles(ProfileMode.SAMPLES_USED, io)


def test_explicit_profiles_are_checked_and_completed(recorded: tuple) -> None:
    io, samples = recorded
    wide = TensorRTProfile().add_input_shape("args_0", (1, 1), (8, 32), (32, 64)).add_input_shape(
        "mask", [1, 1], [8, 32], [32, 64])
    (done,) = derive_profiles([wide], io, samples)
    assert done.shapes["args_1"] == ((4,), (4,), (4,))  # filled in: its shape never varied
    assert "args_1" not in wide.shapes  # the user's object is not changed
    with pytest.raises(ValueError, match=r"'input_ids'.*its tensor inputs are args_0, args_1, mask"):
        derive_profiles([TensorRTProfile().add_input_shape("input_ids", (1,), (1,), (1,))], io)
    with pytest.raises(ValueError, match=r"no shape for input 'mask', whose recorded shape varied"):
        derive_profiles([TensorRTProfile().add_input_shape("args_0", (1, 8), (2, 8), (4, 16))], io)
    with pytest.raises(ValueError, match="rank 3 but the recorded input has rank 2"):
        derive_profiles([TensorRTProfile().add_input_shape("args_0", (1, 1, 1), (1, 1, 1), (1, 1, 1))
                         .add_input_shape("mask", (1, 1), (1, 1), (1, 1))], io)
    narrow = TensorRTProfile().add_input_shape("args_0", (1, 8), (2, 8), (2, 8)).add_input_shape(
        "mask", (1, 8), (2, 8), (2, 8))
    assert uncovered_shape_sets(derive_profiles([narrow], io), io, samples) == [((1, 16), (4,), (1, 16)),
                                                                                ((4, 8), (4,), (4, 8))]


def test_profile_validation_and_chaining() -> None:
    profile = TensorRTProfile()
    assert profile.add_input_shape("x", (1, 3), (2, 3), (4, 3)) is profile
    with pytest.raises(ValueError, match=r"dimension 0: needs min <= opt <= max, got 4, 2, 8"):
        profile.add_input_shape("y", (4, 3), (2, 3), (8, 3))
    with pytest.raises(ValueError, match="same rank"):
        profile.add_input_shape("y", (1, 3), (2, 3), (4, 3, 1))
    with pytest.raises(ValueError, match="negative dimension"):
        profile.add_input_shape("y", (-1, 3), (2, 3), (4, 3))
    with pytest.raises(ValidationError, match="needs min <= opt <= max"):
        TensorRTProfile.model_validate({"shapes": {"x": [[2], [1], [3]]}})
    assert profile.contains({"x": (3, 3)}) and not profile.contains({"x": (5, 3)})
    assert not profile.contains({"x": (3, 3, 1)}) and not profile.contains({})
    assert str(profile) == "TensorRTProfile(x min [1, 3] opt [2, 3] max [4, 3])"


def test_config_validation() -> None:
    assert TensorRTBackendConfig().profiles is ProfileMode.SINGLE
    assert TensorRTBackendConfig(profiles="samples_used").profiles is ProfileMode.SAMPLES_USED
    # As a TOML file gives them: plain lists and tables.
    cfg = TensorRTBackendConfig(profiles=[{"shapes": {"args_0": [[1, 8], [4, 8], [8, 8]]}}],
                                quantization_config={"type": "ONNXAutoCastConfig", "precision": "bf16"},
                                timing_cache="cache/trt.cache", compatibility_level="ampere+")
    assert cfg.profiles[0].shapes["args_0"] == ((1, 8), (4, 8), (8, 8))  # type: ignore[index]
    assert cfg.quantization_config == ONNXAutoCastConfig(precision="bf16")
    assert cfg.timing_cache == Path("cache/trt.cache") and cfg.compatibility_level == "ampere_plus"
    assert TensorRTBackendConfig(compatibility_level="SAME_COMPUTE_CAPABILITY").compatibility_level == \
        "same_compute_capability"
    # Without a type, the fields pick the recipe.
    assert isinstance(TensorRTBackendConfig(quantization_config={"precision": "int8"}).quantization_config,
                      ONNXQuantizationConfig)
    for bad, match in [({"optimization_level": 6}, "less than or equal to 5"),
                       ({"compatibility_level": "turing"}, "compatibility_level"),
                       ({"device": "cpu"}, "run on CUDA devices"),
                       ({"profiles": []}, "empty profile list"),
                       ({"profiles": [TensorRTProfile()]}, "no input shape"),
                       ({"workspace_size": -1}, "greater than or equal to 0"),
                       ({"quantization_config": {"type": "INT3Config"}}, "unknown quantization config type"),
                       ({"use_cuda_graph": True}, "Extra inputs are not permitted")]:
        with pytest.raises(ValidationError, match=match):
            TensorRTBackendConfig(**bad)


def test_quantization_config_validation() -> None:
    assert ONNXQuantizationConfig(quantize_mode="fp8").precision == "fp8"  # ModelOpt's name works too
    with pytest.raises(ValidationError, match="'awq_lite' does not apply to int8"):
        ONNXQuantizationConfig(precision="int8", calibration_method="awq_lite")
    assert ONNXQuantizationConfig(precision="int4", calibration_method="awq_lite").calibration_method == "awq_lite"
    with pytest.raises(ValidationError, match="not a ModelOpt recipe name"):
        TorchQuantizationConfig(quantization_config="fp8")
    with pytest.raises(ValidationError):
        ONNXAutoCastConfig(precision="fp8")
    with pytest.raises(ValidationError, match="frozen"):
        ONNXAutoCastConfig().precision = "bf16"  # type: ignore[misc]


def test_engine_settings_are_json_and_name_the_recipe() -> None:
    profile = TensorRTProfile().add_input_shape("args_0", (1, 16), (4, 16), (8, 16))
    backend = TensorRTBackend(profiles=[profile], timing_cache=Path("/tmp/x.cache"), workspace_size=1 << 30,
                              quantization_config=TorchQuantizationConfig(quantization_config="INT8_DEFAULT_CFG"))
    settings = json.loads(json.dumps(backend.engine_settings()))
    assert settings["profiles"] == [{"shapes": {"args_0": [[1, 16], [4, 16], [8, 16]]}}]
    assert settings["quantization_config"] == {"type": "TorchQuantizationConfig",
                                               "quantization_config": "INT8_DEFAULT_CFG", "device": "cuda",
                                               "calibration_samples": None}
    assert settings["timing_cache"] == "/tmp/x.cache" and settings["workspace_size"] == 1 << 30
    assert json.loads(json.dumps(TensorRTBackend().engine_settings()))["profiles"] == "single"
    assert describe_quantization(None) is None
    assert TensorRTBackend().describe() == "TensorRTBackend"
    assert TensorRTBackend(use_cuda_graphs=True).describe() == "TensorRTBackend(use_cuda_graphs=True)"
    assert TensorRTBackend.kind == "aot" and TensorRTBackend.device_types == ("cuda",)
    assert TensorRTBackend.extra == "tensorrt"


def test_backend_rejects_devices_it_cannot_serve() -> None:
    assert "does not support device type 'cpu'" in (TensorRTBackend().unsupported_reason(torch.device("cpu")) or "")
    reason = TensorRTBackend(device="cuda:1").unsupported_reason(torch.device("cuda:0"))
    assert reason == "the module is on cuda:0 but TensorRTBackend is configured for cuda:1"


def test_engine_metadata_round_trips_as_json() -> None:
    meta = EngineMeta("tensorrt", "10.9.0", ["args_0"], ["output_0", "output_1"],
                      [TensorRTProfile().add_input_shape("args_0", (1, 4), (2, 4), (8, 4))])
    back = EngineMeta.from_json(meta.to_json())
    assert back == meta
    with pytest.raises(ValueError, match="unsupported TensorRT engine metadata format"):
        EngineMeta.from_json('{"format": 99}')


def test_public_module_names() -> None:
    import aitune.torch.backend.tensorrt as public

    assert public.TensorRTBackend is TensorRTBackend and public.TensorRTBackendConfig is TensorRTBackendConfig
    assert {"ProfileMode", "TensorRTProfile"} <= set(public.__all__)
    with pytest.raises(AttributeError):
        public.NotAName  # noqa: B018


def test_missing_library_gives_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_optional, "installed", lambda name: name not in ("tensorrt", "tensorrt_rtx"))
    reason = TensorRTBackend.unavailable_reason()
    assert reason is not None and "tensorrt or tensorrt_rtx" in reason
    assert "pip install 'aitune[tensorrt]'" in reason
    net = Net().eval()
    with pytest.raises(BackendUnavailableError, match=r"aitune\[tensorrt\]"):
        TensorRTBackend().build(net, *record(net, [((torch.randn(1, 16),), {})]), torch.device("cuda"))


def test_missing_modelopt_gives_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_optional, "installed", lambda name: name != "modelopt")
    backend = TensorRTBackend(quantization_config=ONNXAutoCastConfig())
    reason = backend.unsupported_reason(torch.device("cuda"))
    assert reason is not None and "ONNXAutoCastConfig" in reason and "pip install 'aitune[modelopt]'" in reason
    assert TensorRTBackend().unsupported_reason(torch.device("cuda")) is None
    _, samples = record(Net().eval(), [((torch.randn(2, 16),), {})])
    with pytest.raises(BackendUnavailableError, match=r"aitune\[modelopt\]"):
        autocast_onnx(tmp_path / "in.onnx", tmp_path / "out.onnx", ONNXAutoCastConfig(),
                      FlatIO.from_samples(samples, Net().forward), samples)


def test_onnx_calibration_data_comes_from_the_most_common_shape_set(recorded: tuple) -> None:
    io, samples = recorded
    data, spec = calibration_arrays(io, samples, ["args_0", "mask"])  # args_1 was dropped by the exporter
    assert sorted(data) == ["args_0", "mask"]
    assert data["args_0"].shape == (6, 8) and data["mask"].shape == (6, 8)  # three (2, 8) samples, stacked
    assert spec == "args_0:2x8,mask:2x8"  # one calibration step is one recorded call
    bf16 = [type(s)(tuple(a.bfloat16() if a.is_floating_point() else a for a in s.args), s.kwargs, s.outputs)
            for s in samples]
    with pytest.raises(ValueError, match="bfloat16"):
        calibration_arrays(io, bf16, ["args_0", "args_1"])


def test_example_override_files_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/tensorrt.toml gives the TensorRT candidate its ModelOpt recipe from a TOML table; the .py example
    names Torch-TensorRT, so without that library start-up stops with the install command."""
    from pathlib import Path

    from aitune.torch._errors import ConfigError
    from aitune.torch.backend import ONNXAutoCastConfig, TensorRTBackend, TorchInductorJitBackend, _optional
    from aitune.torch.jit.config import config, load_jit_config

    configs = Path(__file__).resolve().parents[2] / "configs"
    monkeypatch.setenv("AITUNE_JIT_CONFIG", str(configs / "tensorrt.toml"))
    if not (_optional.installed("tensorrt") or _optional.installed("tensorrt_rtx")):
        with pytest.raises(ConfigError, match=r"pip install 'aitune\[tensorrt\]'"):
            load_jit_config()
        return
    load_jit_config()
    trt, inductor = config.backends or []
    assert isinstance(trt, TensorRTBackend) and isinstance(inductor, TorchInductorJitBackend)
    assert isinstance(trt.config.quantization_config, ONNXAutoCastConfig)
    assert trt.config.use_cuda_graphs and trt.config.timing_cache == Path.home() / ".cache/aitune/tensorrt.timing"
    assert "quantization_config=ONNXAutoCastConfig" in trt.describe()
    monkeypatch.setenv("AITUNE_JIT_CONFIG", str(configs / "tensorrt_profiles.py"))
    if _optional.installed("torch_tensorrt"):
        load_jit_config()
        assert [type(b).__name__ for b in config.backends or []] == ["TensorRTBackend", "TorchTensorRTJitBackend"]
    else:
        with pytest.raises(ConfigError) as info:
            load_jit_config()
        text = str(info.value)
        assert "pip install 'aitune[torch-tensorrt]'" in text and "tensorrt_profiles.py:" in text, text


def test_quantized_engines_are_checked_at_their_compute_precision() -> None:
    from aitune.torch.backend import (
        ONNXAutoCastConfig,
        ONNXQuantizationConfig,
        TensorRTBackend,
        TorchQuantizationConfig,
    )

    assert TensorRTBackend().compute_dtype() is None
    assert TensorRTBackend(quantization_config=ONNXAutoCastConfig()).compute_dtype() is torch.float16
    assert TensorRTBackend(quantization_config=ONNXAutoCastConfig(precision="bf16")).compute_dtype() is torch.bfloat16
    assert TensorRTBackend(quantization_config=ONNXQuantizationConfig()).compute_dtype() is torch.float16
    fp32 = ONNXQuantizationConfig(high_precision_dtype="fp32")
    assert TensorRTBackend(quantization_config=fp32).compute_dtype() is None
    assert TensorRTBackend(quantization_config=TorchQuantizationConfig()).compute_dtype() is torch.float16
