"""Settings objects and backend names where scripts written for NVIDIA AITune look for them: `ait.config` and
`ait.jit_config` are the settings objects (an assignment is never silently ignored), backends are found by
case-insensitive and short names."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import aitune.torch as ait
from aitune.torch._errors import ConfigError, UnknownBackendError
from aitune.torch.backend import (
    ONNXRuntimeBackend,
    TensorRTBackend,
    TorchEagerBackend,
    TorchInductorJitBackend,
    get_backend_class,
)
from aitune.torch.config import config as global_config
from aitune.torch.jit.config import config as jit_settings
from aitune.torch.jit.config import load_jit_config


def test_ait_config_is_the_global_settings_object() -> None:
    ait.config.max_num_samples_stored = 7
    assert global_config.max_num_samples_stored == 7 and ait.config.max_num_samples_stored == 7
    assert ait.config.setting_sources()["max_num_samples_stored"].startswith("code at " + __file__)
    with pytest.raises(ConfigError, match="did you mean 'max_num_samples_stored'") as err:
        ait.config.max_num_sample_stored = 3
    assert __file__ in str(err.value)
    with pytest.raises(ConfigError, match="max_num_samples_stored"):
        ait.config.max_num_samples_stored = 0


def test_jit_config_is_the_jit_settings_object_wherever_it_is_imported() -> None:
    from aitune.torch import jit_config
    from aitune.torch.jit import config as jit_module

    assert jit_config is ait.jit_config is jit_settings
    jit_config.min_samples = 1
    assert jit_settings.min_samples == 1
    jit_module.min_samples = 2  # the module used as the object, as AITune's docs write it
    assert jit_settings.min_samples == 2 and jit_module.min_samples == 2
    with pytest.raises(ConfigError, match="unknown setting"):
        jit_module.min_sample = 4
    assert "min_samples" in dir(jit_module)


def test_importing_jit_config_enables_nothing() -> None:
    code = textwrap.dedent("""
        import torch
        from aitune.torch import jit_config
        from aitune.torch.jit import is_enabled
        jit_config.min_samples = 1
        print(is_enabled(), torch.nn.Module.__call__.__qualname__)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "Module._wrapped_call_impl"], out


@pytest.mark.parametrize(("name", "cls"), [
    ("inductor", TorchInductorJitBackend), ("TorchInductorJit", TorchInductorJitBackend),
    ("torchinductorjitbackend", TorchInductorJitBackend), ("onnxruntime", ONNXRuntimeBackend),
    ("onnx_runtime", ONNXRuntimeBackend), ("ORT", ONNXRuntimeBackend), ("tensorrt", TensorRTBackend),
    ("eager", TorchEagerBackend), ("TorchEagerBackend", TorchEagerBackend),
])
def test_backends_are_found_by_case_insensitive_and_short_names(name: str, cls: type) -> None:
    assert get_backend_class(name) is cls


def test_a_near_miss_gets_a_suggestion_and_the_list(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UnknownBackendError, match="Did you mean 'ONNXRuntimeBackend'") as err:
        get_backend_class("onnxruntim")
    assert "short names: " in str(err.value) and "inductor" in str(err.value)
    monkeypatch.setenv("AITUNE_JIT_BACKENDS", "inductor, onnxruntime")
    load_jit_config()
    assert [type(b) for b in jit_settings.backends or []] == [TorchInductorJitBackend, ONNXRuntimeBackend]


def test_several_bad_backend_names_are_all_named_and_the_list_is_printed_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AITUNE_JIT_BACKENDS", "inductr, eager, onnxrt, tensorrtt")
    with pytest.raises(ConfigError) as err:
        load_jit_config()
    text = str(err.value)
    for index, name, hint in ((0, "inductr", "TorchInductorJitBackend"), (2, "onnxrt", "ONNXRuntimeBackend"),
                              (3, "tensorrtt", "TensorRTBackend")):
        assert f"backends[{index}]: unknown backend {name!r}. Did you mean {hint!r}?" in text, text
    assert "backends[1]" not in text
    assert text.count("Registered backends:") == 1 and text.count("TorchTensorRTAotBackend") == 1, text


def test_strategy_names_and_calls_of_aitune_scripts_are_accepted() -> None:
    import torch

    from aitune.torch.backend._torch_tensorrt import TorchTensorRTJitBackendConfig

    strategy = ait.MaxThroughputStrategy(backends=[TorchEagerBackend()])
    assert isinstance(strategy, ait.HighestThroughputStrategy)
    assert strategy.enable_performance_validation(False).enable_find_max_batch_size(False) is strategy
    jit_settings.strategy = None  # AITune's way to ask for the default
    assert jit_settings.strategy == "highest_throughput"
    assert TorchInductorJitBackend(autocast_enabled=True, autocast_dtype=torch.float16).config.autocast_dtype == \
        "float16"
    assert TorchTensorRTJitBackendConfig(autocast_dtype=torch.bfloat16).autocast_dtype == "bfloat16"
    with pytest.raises(ValueError, match="float16"):
        TorchInductorJitBackend(autocast_dtype=torch.float32)
