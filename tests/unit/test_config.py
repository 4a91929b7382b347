"""Settings: defaults, every source, their priority, in-place loading, and the error messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aitune.torch._errors import ConfigError
from aitune.torch._settings import _sources as _settings_sources
from aitune.torch.backend import TorchEagerBackend, TorchInductorJitBackend
from aitune.torch.config import DEFAULT_TOLERANCES, GlobalConfig, load_global_config
from aitune.torch.config import config as global_config
from aitune.torch.jit.config import DEFAULT_EXCLUDE_PACKAGES, JITConfig, JITMode, config, load_jit_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.upper().startswith("AITUNE_"):
            monkeypatch.delenv(name)
    _settings_sources.reset_settings()
    yield
    _settings_sources.reset_settings()


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def _use_file(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    monkeypatch.setenv("AITUNE_JIT_CONFIG", str(path))


def _load_error() -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_jit_config()
    return info.value


# --- defaults ---------------------------------------------------------------------------------------------------

def test_global_defaults() -> None:
    assert global_config.max_num_samples_stored == 3
    assert global_config.max_samples_bytes == 1 << 30
    assert global_config.strict is False
    assert global_config.tolerances == DEFAULT_TOLERANCES
    assert global_config.tolerances["bfloat16"] == (5e-2, 5e-2)
    assert (global_config.timing_warmup, global_config.timing_iterations) == (3, 20)
    assert global_config.timing_max_seconds == 2.0
    assert global_config.min_speedup == 1.05


def test_jit_defaults() -> None:
    assert config.mode is JITMode.TUNE_EAGER
    assert config.backends is None
    assert config.strategy == "highest_throughput"
    assert (config.min_samples, config.max_depth_level, config.min_parameters) == (3, 2, 1)
    assert config.skip_modules == []
    assert config.exclude_packages == list(DEFAULT_EXCLUDE_PACKAGES)
    assert "torch.fx" in config.exclude_packages and "aitune" in config.exclude_packages
    assert config.report is None
    assert (config.summary, config.progress, config.log_level) == (True, True, "INFO")


def test_every_field_has_a_description() -> None:
    for cls in (GlobalConfig, JITConfig):
        for name, info in cls.model_fields.items():
            assert info.description, f"{cls.__name__}.{name} has no description"


def test_load_without_sources_keeps_defaults() -> None:
    load_jit_config()
    assert config == JITConfig()
    assert global_config == GlobalConfig()
    assert set(config.setting_sources().values()) == {"default"}


def test_construction_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AITUNE_JIT_MIN_SAMPLES", "9")
    assert JITConfig().min_samples == 3
    assert config.min_samples == 3  # only a load reads the environment


def test_import_is_light() -> None:
    code = ("import sys, aitune.torch.jit.config, aitune.torch.config; "
            "bad = [m for m in ('transformers', 'torch._dynamo', 'torch._inductor') if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- environment --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("var", "text", "field", "expected"), [
    ("AITUNE_JIT_MODE", "TUNE_DEFERRED", "mode", JITMode.TUNE_DEFERRED),
    ("AITUNE_JIT_MODE", "inspect", "mode", JITMode.INSPECT),
    ("AITUNE_JIT_MODE", " Tune_Eager ", "mode", JITMode.TUNE_EAGER),
    ("AITUNE_JIT_STRATEGY", "first_wins", "strategy", "first_wins"),
    ("AITUNE_JIT_STRATEGY", "One-Backend", "strategy", "one_backend"),
    ("AITUNE_JIT_MIN_SAMPLES", "5", "min_samples", 5),
    ("AITUNE_JIT_MAX_DEPTH_LEVEL", "0", "max_depth_level", 0),
    ("AITUNE_JIT_MIN_PARAMETERS", "1000", "min_parameters", 1000),
    ("AITUNE_JIT_SKIP_MODULES", "BertEmbeddings, transformers.models.bert.modeling_bert.BertPooler", "skip_modules",
     ["BertEmbeddings", "transformers.models.bert.modeling_bert.BertPooler"]),
    ("AITUNE_JIT_SKIP_MODULES", '["A", "B"]', "skip_modules", ["A", "B"]),
    ("AITUNE_JIT_EXCLUDE_PACKAGES", "torch.fx,mylib.", "exclude_packages", ["torch.fx", "mylib."]),
    ("AITUNE_JIT_EXCLUDE_PACKAGES", "", "exclude_packages", []),
    ("AITUNE_JIT_SUMMARY", "false", "summary", False),
    ("AITUNE_JIT_PROGRESS", "0", "progress", False),
    ("AITUNE_JIT_CACHE_DIR", "/tmp/aitune-cache", "cache_dir", Path("/tmp/aitune-cache")),
    ("AITUNE_JIT_CACHE_DIR", "", "cache_dir", None),
    ("AITUNE_JIT_CACHE_MAX_BYTES", "2GiB", "cache_max_bytes", 2 << 30),
    ("AITUNE_JIT_LOG_LEVEL", "debug", "log_level", "DEBUG"),
    ("AITUNE_JIT_LOG_LEVEL", "off", "log_level", "OFF"),
    ("aitune_jit_min_samples", "4", "min_samples", 4),  # names match case-insensitively
])
def test_jit_env(monkeypatch: pytest.MonkeyPatch, var: str, text: str, field: str, expected: Any) -> None:
    monkeypatch.setenv(var, text)
    load_jit_config()
    assert getattr(config, field) == expected
    assert config.setting_sources()[field] == f"environment variable {var}"


@pytest.mark.parametrize(("var", "text", "field", "expected"), [
    ("AITUNE_MAX_NUM_SAMPLES_STORED", "7", "max_num_samples_stored", 7),
    ("AITUNE_MAX_SAMPLES_BYTES", "512MiB", "max_samples_bytes", 512 << 20),
    ("AITUNE_MAX_SAMPLES_BYTES", "0", "max_samples_bytes", 0),
    ("AITUNE_STRICT", "true", "strict", True),
    ("AITUNE_TIMING_WARMUP", "0", "timing_warmup", 0),
    ("AITUNE_TIMING_ITERATIONS", "100", "timing_iterations", 100),
    ("AITUNE_TIMING_MAX_SECONDS", "0.5", "timing_max_seconds", 0.5),
    ("AITUNE_MIN_SPEEDUP", "1.0", "min_speedup", 1.0),
])
def test_global_env(monkeypatch: pytest.MonkeyPatch, var: str, text: str, field: str, expected: Any) -> None:
    monkeypatch.setenv(var, text)
    load_global_config()
    assert getattr(global_config, field) == expected


def test_env_tolerances_merge_over_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AITUNE_TOLERANCES", '{"float16": [0.1, 0.2], "torch.float32": [1e-4, 1e-5]}')
    load_global_config()
    assert global_config.tolerances == {**DEFAULT_TOLERANCES, "float16": (0.1, 0.2), "float32": (1e-4, 1e-5)}


def test_env_backends_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AITUNE_JIT_BACKENDS", "TorchInductorJitBackend, TorchEagerBackend")
    load_jit_config()
    assert config.backends is not None
    assert [type(b) for b in config.backends] == [TorchInductorJitBackend, TorchEagerBackend]


def test_env_backends_json_with_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AITUNE_JIT_BACKENDS",
                       json.dumps([{"name": "TorchInductorJitBackend", "mode": "max-autotune", "dynamic": False},
                                   "TorchEagerBackend"]))
    load_jit_config()
    assert config.backends is not None
    first, second = config.backends
    assert isinstance(first, TorchInductorJitBackend)
    assert (first.config.mode, first.config.dynamic) == ("max-autotune", False)
    assert isinstance(second, TorchEagerBackend)


def test_env_empty_backends_means_device_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AITUNE_JIT_BACKENDS", "")
    load_jit_config()
    assert config.backends is None


def test_env_report_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AITUNE_JIT_REPORT", "out/report.json")
    load_jit_config()
    assert config.report == tmp_path / "out" / "report.json"
    monkeypatch.chdir(REPO)
    assert config.report == tmp_path / "out" / "report.json"  # resolved at load, not at write


def test_unknown_env_var_is_logged(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("AITUNE_JIT_MIN_SAMPLE", "3")
    with caplog.at_level("WARNING", logger="aitune"):
        load_jit_config()
    assert "AITUNE_JIT_MIN_SAMPLE" in caplog.text and "AITUNE_JIT_MIN_SAMPLES" in caplog.text


# --- override files -------------------------------------------------------------------------------------------

def test_toml_file_with_backends_and_global(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _write(tmp_path, "settings.toml", """
        mode = "INSPECT"
        min_samples = 2
        skip_modules = ["BertEmbeddings"]

        [[backends]]
        name = "TorchInductorJitBackend"
        mode = "max-autotune"
        fullgraph = true

        [[backends]]
        name = "TorchEagerBackend"

        [global]
        strict = true
        timing_iterations = 7

        [global.tolerances]
        float16 = [0.5, 0.25]
    """)
    _use_file(monkeypatch, path)
    load_jit_config()
    assert config.mode is JITMode.INSPECT
    assert config.min_samples == 2
    assert config.skip_modules == ["BertEmbeddings"]
    assert config.backends is not None
    inductor, eager = config.backends
    assert isinstance(inductor, TorchInductorJitBackend) and isinstance(eager, TorchEagerBackend)
    assert (inductor.config.mode, inductor.config.fullgraph) == ("max-autotune", True)
    assert global_config.strict is True
    assert global_config.timing_iterations == 7
    assert global_config.tolerances == {**DEFAULT_TOLERANCES, "float16": (0.5, 0.25)}
    assert config.setting_sources()["min_samples"] == f"{path}:2"
    assert global_config.setting_sources()["timing_iterations"] == f"{path}:15"


def test_toml_inline_backend_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _use_file(monkeypatch, _write(tmp_path, "s.toml", 'backends = ["TorchEagerBackend"]\n'))
    load_jit_config()
    assert config.backends is not None and [b.name for b in config.backends] == ["TorchEagerBackend"]


def test_py_file_sets_backends_and_global(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _write(tmp_path, "settings.py", """
        from aitune.torch.backend import TorchInductorJitBackend

        config.backends = [TorchInductorJitBackend(mode="max-autotune")]
        config.mode = JITMode.TUNE_DEFERRED
        config.skip_modules.append("BertPooler")
        global_config.min_speedup = 1.5
    """)
    _use_file(monkeypatch, path)
    load_jit_config()
    assert config.backends is not None
    (backend,) = config.backends
    assert isinstance(backend, TorchInductorJitBackend) and backend.config.mode == "max-autotune"
    assert config.mode is JITMode.TUNE_DEFERRED
    assert config.skip_modules == ["BertPooler"]
    assert global_config.min_speedup == 1.5
    assert config.setting_sources()["backends"] == f"{path}:3"
    # A second load re-runs the file from the sources, not on top of its own previous result.
    load_jit_config()
    assert config.skip_modules == ["BertPooler"]


@pytest.mark.parametrize("name", ["inductor.toml", "inspect_only.toml", "inductor_max_autotune.py"])
def test_shipped_example_configs_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> None:
    monkeypatch.chdir(tmp_path)
    _use_file(monkeypatch, REPO / "configs" / name)
    load_jit_config()
    if name == "inspect_only.toml":
        assert config.mode is JITMode.INSPECT and config.report == tmp_path / "aitune_inspect.json"
    else:
        assert config.backends and all(isinstance(b, TorchInductorJitBackend) for b in config.backends)


# --- priority: defaults < toml < env < py < code -----------------------------------------------------------------

def test_env_beats_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _use_file(monkeypatch, _write(tmp_path, "s.toml", "min_samples = 2\nmax_depth_level = 5\n"))
    load_jit_config()
    assert config.min_samples == 2
    monkeypatch.setenv("AITUNE_JIT_MIN_SAMPLES", "3")
    load_jit_config()
    assert (config.min_samples, config.max_depth_level) == (3, 5)
    assert config.setting_sources()["min_samples"] == "environment variable AITUNE_JIT_MIN_SAMPLES"


def test_py_beats_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _use_file(monkeypatch, _write(tmp_path, "s.py", "config.min_samples = 4\n"))
    monkeypatch.setenv("AITUNE_JIT_MIN_SAMPLES", "3")
    monkeypatch.setenv("AITUNE_JIT_MAX_DEPTH_LEVEL", "6")
    load_jit_config()
    assert (config.min_samples, config.max_depth_level) == (4, 6)


def test_py_file_sees_env_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _use_file(monkeypatch, _write(tmp_path, "s.py", "config.min_samples = config.min_samples * 2\n"))
    monkeypatch.setenv("AITUNE_JIT_MIN_SAMPLES", "3")
    load_jit_config()
    assert config.min_samples == 6


def test_code_beats_py_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _use_file(monkeypatch, _write(tmp_path, "s.py", "config.min_samples = 4\nglobal_config.strict = False\n"))
    monkeypatch.setenv("AITUNE_JIT_MIN_SAMPLES", "3")
    monkeypatch.setenv("AITUNE_STRICT", "1")
    config.min_samples = 5
    global_config.strict = True
    load_jit_config()
    assert config.min_samples == 5 and global_config.strict is True
    assert config.setting_sources()["min_samples"].startswith("code at " + __file__)
    load_jit_config()  # still code's value on every later load
    assert config.min_samples == 5


def test_code_beats_toml_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _use_file(monkeypatch, _write(tmp_path, "s.toml", "min_samples = 2\n[global]\ntiming_warmup = 1\n"))
    monkeypatch.setenv("AITUNE_JIT_MIN_SAMPLES", "3")
    config.min_samples = 5
    global_config.timing_warmup = 0
    load_jit_config()
    assert (config.min_samples, global_config.timing_warmup) == (5, 0)


def test_ensure_loaded_loads_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AITUNE_JIT_MIN_SAMPLES", "4")
    _settings_sources.ensure_settings_loaded()
    assert config.min_samples == 4
    monkeypatch.setenv("AITUNE_JIT_MIN_SAMPLES", "5")
    _settings_sources.ensure_settings_loaded()
    assert config.min_samples == 4  # already loaded: no re-read
    load_jit_config()
    assert config.min_samples == 5


def test_code_set_to_default_value_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AITUNE_JIT_SUMMARY", "0")
    config.summary = True  # the default, but chosen by code
    load_jit_config()
    assert config.summary is True


def test_in_place_mutation_from_code_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AITUNE_JIT_SKIP_MODULES", "FromEnv")
    config.skip_modules.append("FromCode")
    load_jit_config()
    assert config.skip_modules == ["FromCode"]


def test_fields_not_set_by_code_follow_the_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AITUNE_JIT_MIN_SAMPLES", "7")
    load_jit_config()
    assert config.min_samples == 7
    monkeypatch.delenv("AITUNE_JIT_MIN_SAMPLES")
    load_jit_config()
    assert config.min_samples == 3  # back to the default once the variable is gone


def test_load_updates_singletons_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    import aitune.torch.jit.config as jit_module

    held = jit_module.config
    monkeypatch.setenv("AITUNE_JIT_MODE", "inspect")
    load_jit_config()
    assert jit_module.config is held and held.mode is JITMode.INSPECT


def test_model_copy_is_an_independent_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    config.backends = ["TorchEagerBackend"]  # type: ignore[list-item]
    snap = config.model_copy()
    snap.min_samples = 9
    config.max_depth_level = 4
    assert (config.min_samples, snap.max_depth_level) == (3, 2)
    assert snap.backends == config.backends
    with pytest.raises(ConfigError):
        snap.min_samples = 0  # copies validate too
    monkeypatch.setenv("AITUNE_JIT_MIN_SAMPLES", "8")
    load_jit_config()
    assert snap.min_samples == 9  # loads touch only the singleton


def test_json_dump_of_settings() -> None:
    config.backends = [TorchInductorJitBackend(mode="max-autotune"), "TorchEagerBackend"]  # type: ignore[list-item]
    dumped = json.loads(config.model_dump_json())
    assert dumped["mode"] == "tune_eager"
    assert dumped["backends"][0]["name"] == "TorchInductorJitBackend"
    assert dumped["backends"][0]["mode"] == "max-autotune"
    assert json.loads(global_config.model_dump_json())["tolerances"]["float32"] == [1e-3, 1e-3]


def test_strategy_object_is_duck_typed() -> None:
    class MyStrategy:
        def tune(self, *args: Any) -> None:
            return None

    strategy = MyStrategy()
    config.strategy = strategy
    assert config.strategy is strategy
    assert json.loads(config.model_dump_json())["strategy"] == "MyStrategy"


def test_backend_items_accept_classes_and_instances() -> None:
    eager = TorchEagerBackend()
    mixed = [eager, TorchInductorJitBackend, {"name": "torchinductorjitbackend", "dynamic": True}]
    config.backends = mixed  # type: ignore[assignment]
    assert config.backends is not None
    assert config.backends[0] is eager
    assert isinstance(config.backends[1], TorchInductorJitBackend)
    assert isinstance(config.backends[2], TorchInductorJitBackend) and config.backends[2].config.dynamic is True


def test_reset_restores_defaults_and_forgets_code() -> None:
    config.min_samples = 8
    _settings_sources.reset_settings()
    assert config.min_samples == 3
    assert config.setting_sources()["min_samples"] == "default"


# --- errors ---------------------------------------------------------------------------------------------------

def test_bad_enum_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AITUNE_JIT_MODE", "turbo")
    err = _load_error()
    text = str(err)
    assert "'mode'" in text and "AITUNE_JIT_MODE" in text and "'turbo'" in text
    assert "tune_eager, tune_deferred, inspect" in text
    assert err.field == "mode" and err.source == "environment variable AITUNE_JIT_MODE"


def test_bad_int_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AITUNE_JIT_MIN_SAMPLES", "abc")
    text = str(_load_error())
    assert "min_samples" in text and "environment variable AITUNE_JIT_MIN_SAMPLES" in text
    assert "'abc'" in text and "valid integer" in text and "an integer >= 1" in text


def test_out_of_range_global_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AITUNE_MIN_SPEEDUP", "-0.5")
    text = str(_load_error())
    assert "min_speedup" in text and "AITUNE_MIN_SPEEDUP" in text and "a number > 0" in text


def test_all_bad_values_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AITUNE_JIT_MIN_SAMPLES", "x")
    monkeypatch.setenv("AITUNE_TIMING_ITERATIONS", "0")
    text = str(_load_error())
    assert text.startswith("2 invalid aitune settings")
    assert "AITUNE_JIT_MIN_SAMPLES" in text and "AITUNE_TIMING_ITERATIONS" in text


def test_failed_load_leaves_settings_unchanged(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _use_file(monkeypatch, _write(tmp_path, "s.py", "config.min_samples = 6\nraise RuntimeError('boom')\n"))
    monkeypatch.setenv("AITUNE_JIT_MAX_DEPTH_LEVEL", "5")
    _load_error()
    assert (config.min_samples, config.max_depth_level) == (3, 2)


def test_unknown_backend_name_lists_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AITUNE_JIT_BACKENDS", "TorchInductorJitBackend,TensorRTMagic")
    text = str(_load_error())
    assert "backends" in text and "AITUNE_JIT_BACKENDS" in text and "TensorRTMagic" in text
    registered = text.split("Registered backends: ", 1)[1]
    assert all(name in registered for name in ("TorchEagerBackend", "TorchInductorJitBackend", "ONNXRuntimeBackend",
                                               "TensorRTBackend", "TorchInductorAotBackend"))


def test_unknown_backend_suggests_close_name() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'TorchEagerBackend'"):
        config.backends = ["TorchEagerBackennd"]  # type: ignore[list-item]


def test_bad_backend_option_in_toml_points_at_its_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _write(tmp_path, "s.toml", """
        [[backends]]
        name = "TorchEagerBackend"

        [[backends]]
        name = "TorchInductorJitBackend"
        mode = "ludicrous"
    """)
    _use_file(monkeypatch, path)
    err = _load_error()
    text = str(err)
    assert f"{path}:6" in text and err.source == f"{path}:6"
    assert "backends[1]" in text and "mode" in text and "'ludicrous'" in text and "max-autotune" in text
    assert "TorchInductorJitBackend options: mode, fullgraph" in text


def test_backend_table_without_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _write(tmp_path, "s.toml", "min_samples = 3\n[[backends]]\nmode = \"default\"\n")
    _use_file(monkeypatch, path)
    text = str(_load_error())
    assert f"{path}:2" in text and "needs a 'name'" in text and "TorchEagerBackend" in text


def test_empty_backend_list_rejected() -> None:
    with pytest.raises(ConfigError, match="empty list would tune nothing"):
        config.backends = []


def test_bad_value_in_toml_names_file_and_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _write(tmp_path, "s.toml", """
        # comment
        min_samples = 2
        mode = "fast"

        [global]
        timing_max_seconds = -1

        [global.tolerances]
        int8 = [0, 0]
    """)
    _use_file(monkeypatch, path)
    text = str(_load_error())
    assert text.startswith("3 invalid aitune settings")
    assert f"{path}:3" in text and "'mode'" in text and "'fast'" in text
    assert f"{path}:6" in text and "timing_max_seconds" in text and "a number > 0" in text
    assert f"{path}:8" in text and "'int8' is not a floating-point dtype" in text


def test_unknown_toml_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _write(tmp_path, "s.toml", "min_sample = 2\n[global]\nstrictt = true\n")
    _use_file(monkeypatch, path)
    text = str(_load_error())
    assert f"{path}:1" in text and "did you mean 'min_samples'" in text and "[global] table" in text
    assert f"{path}:3" in text and "did you mean 'strict'" in text


def test_toml_syntax_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _write(tmp_path, "s.toml", "min_samples = 2\nmode = \n")
    _use_file(monkeypatch, path)
    err = _load_error()
    assert str(err).startswith(f"{path}:2: not valid TOML")
    assert "[[backends]]" in str(err) and err.field == "AITUNE_JIT_CONFIG"


def test_missing_override_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _use_file(monkeypatch, tmp_path / "nope.toml")
    text = str(_load_error())
    assert "AITUNE_JIT_CONFIG" in text and "nope.toml" in text and "does not exist" in text
    assert ".toml file" in text and ".py file" in text


def test_bad_override_suffix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _use_file(monkeypatch, _write(tmp_path, "s.yaml", "min_samples: 2\n"))
    err = _load_error()
    assert "'.yaml'" in str(err) and ".toml" in str(err) and ".py" in str(err)
    assert err.source == "environment variable AITUNE_JIT_CONFIG"


def test_exception_in_py_file_names_its_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _write(tmp_path, "s.py", "config.min_samples = 2\n\nvalue = undefined_name + 1\n")
    _use_file(monkeypatch, path)
    err = _load_error()
    assert str(err).startswith(f"{path}:3: the override file raised NameError")
    assert "global_config" in str(err) and err.source == f"{path}:3"


def test_syntax_error_in_py_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _write(tmp_path, "s.py", "config.min_samples = (\n")
    _use_file(monkeypatch, path)
    assert str(_load_error()).startswith(f"{path}:1: invalid Python")


def test_bad_assignment_in_py_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _write(tmp_path, "s.py", "config.summary = True\nconfig.min_samples = 0\n")
    _use_file(monkeypatch, path)
    err = _load_error()
    text = str(err)
    assert "min_samples" in text and f"{path}:2" in text and "an integer >= 1" in text
    assert err.source == f"{path}:2"


def test_bad_backend_built_in_py_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _write(tmp_path, "s.py", """
        from aitune.torch.backend import TorchInductorJitBackend
        config.backends = [TorchInductorJitBackend(mode="warp")]
    """)
    _use_file(monkeypatch, path)
    text = str(_load_error())
    assert text.startswith(f"{path}:2:") and "mode" in text and "'warp'" in text


def test_unknown_field_assigned_from_code() -> None:
    with pytest.raises(ConfigError, match="did you mean 'min_samples'") as info:
        config.min_sample = 3  # type: ignore[attr-defined]
    assert "code at " + __file__ in str(info.value)


def test_bad_assignment_from_code_names_field_and_line() -> None:
    with pytest.raises(ConfigError) as info:
        config.min_samples = 0
    err = info.value
    assert err.field == "min_samples" and "AITUNE_JIT_MIN_SAMPLES" in str(err)
    assert err.source is not None and err.source.startswith("code at " + __file__)
    assert isinstance(err, ValueError)  # ConfigError is a ValueError, like pydantic's ValidationError


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("log_level", "loud", "DEBUG, INFO, WARNING, ERROR, CRITICAL, OFF"),
    ("strategy", "fastest", "highest_throughput, first_wins, one_backend"),
    ("strategy", object(), "no callable tune() method"),
    ("strategy", TorchEagerBackend, "pass an instance"),
    ("skip_modules", [1], "valid string"),
    ("backends", [42], "is not a backend name"),
])
def test_bad_jit_values_from_code(field: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        setattr(config, field, value)
    assert expected in str(info.value)


@pytest.mark.parametrize(("value", "expected"), [
    ({"int64": [1, 1]}, "not a floating-point dtype name"),
    ({"float32": [1e-3]}, "expected [rtol, atol]"),
    ({"float32": [-1, 0]}, ">= 0"),
    ([1, 2], "expected a mapping"),
])
def test_bad_tolerances(value: Any, expected: str) -> None:
    with pytest.raises(ConfigError, match="tolerances") as info:
        global_config.tolerances = value
    assert expected in str(info.value)


def test_bad_json_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AITUNE_TOLERANCES", "{float16: 1}")
    text = str(_load_error())
    assert "AITUNE_TOLERANCES" in text and "not valid JSON" in text and "'{float16: 1}'" in text


def test_bad_byte_size_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AITUNE_MAX_SAMPLES_BYTES", "lots")
    text = str(_load_error())
    assert "max_samples_bytes" in text and "512MiB" in text


def test_bad_cache_size_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AITUNE_JIT_CACHE_MAX_BYTES", "lots")
    text = str(_load_error())
    assert "cache_max_bytes" in text and "AITUNE_JIT_CACHE_MAX_BYTES" in text and "20GiB" in text
