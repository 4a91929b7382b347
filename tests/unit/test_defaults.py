"""Default candidates adapt to the device and to what is installed; a missing library is named, not fatal,
unless the user named that backend explicitly."""

from __future__ import annotations

import logging

import pytest
import torch

from aitune.torch._errors import ConfigError
from aitune.torch.backend import _defaults, _optional
from aitune.torch.backend._defaults import default_backends
from aitune.torch.jit.config import config


def _names(device: str) -> list[str]:
    return [b.describe() for b in default_backends(torch.device(device))]


@pytest.fixture(autouse=True)
def _fresh_log_memory() -> None:
    _defaults.reset()


def test_cpu_defaults_are_inductor_and_onnxruntime_when_installed() -> None:
    pytest.importorskip("onnxruntime")
    assert _names("cpu") == ["TorchInductorJitBackend", "ONNXRuntimeBackend"]


def test_cuda_defaults_include_cuda_graph_variants() -> None:
    names = _names("cuda")
    assert names.index("TorchInductorJitBackend") < names.index("TorchInductorJitBackend(mode='reduce-overhead')")
    # TensorRT only with the full library (TensorRT-RTX does not run engines on data-center GPUs).
    has_trt = _optional.installed("tensorrt")
    assert ("TensorRTBackend" in names) == has_trt
    assert ("TensorRTBackend(use_cuda_graphs=True)" in names) == has_trt


def test_missing_library_is_skipped_with_one_info_line(monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(_optional, "installed", lambda name: name != "onnxruntime")
    with caplog.at_level(logging.INFO, logger="aitune.torch.backend._defaults"):
        assert _names("cpu") == ["TorchInductorJitBackend"]
        assert _names("cpu") == ["TorchInductorJitBackend"]
    lines = [r.getMessage() for r in caplog.records if "ONNXRuntimeBackend" in r.getMessage()]
    assert len(lines) == 1 and "pip install 'aitune[onnxruntime]'" in lines[0]


def test_backend_named_explicitly_without_its_library_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_optional, "installed", lambda name: name != "onnxruntime")
    with pytest.raises(ConfigError, match=r"backends\[1\].*pip install 'aitune\[onnxruntime\]'"):
        config.backends = ["TorchInductorJitBackend", "ONNXRuntimeBackend"]  # type: ignore[list-item]
    assert config.backends is None
