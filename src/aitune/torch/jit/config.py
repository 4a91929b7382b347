"""JIT settings: `aitune.torch.jit.config.config` (env prefix `AITUNE_JIT_`) and `JITMode`.

They steer the hook that patches `torch.nn.Module.__call__`: which modules are tracked and tuned, when, with
which backends and strategy, and what is reported. Assign fields from code (`config.min_samples = 5`); every
assignment is validated and a bad value raises ConfigError naming the field.

Sources, lowest to highest priority: defaults < TOML override file < `AITUNE_JIT_*` env vars < .py override
file < code. `AITUNE_JIT_CONFIG` names the override file; examples live in the repository's configs/ folder.

Known limits: importing this module reads nothing (it imports torch and the backend registry, nothing that
compiles); the hook calls `load_jit_config()` at enable time. The hot path must not read these fields per call:
tuning code takes `config.model_copy()` when it starts (a shallow copy: backends are shared, they are immutable).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_serializer, field_validator
from pydantic_settings import SettingsConfigDict

from aitune.torch._errors import UnknownBackendError
from aitune.torch._settings._model import TrackedSettings, register_scope, settings_module
from aitune.torch._settings._problems import SettingItemError, summarize_validation_error
from aitune.torch._settings._sources import load_settings
from aitune.torch._units import parse_byte_size
from aitune.torch.backend import Backend, backend_names, create_backend, get_backend_class
from aitune.torch.backend._registry import closest_backend_hint, known_backends_text
from aitune.torch.config import config as global_config
from aitune.torch.tune_strategy import STRATEGY_NAMES


class JITMode(enum.StrEnum):
    """What the hook does with the modules it finds."""

    #: Record samples, then tune each module as soon as it has `min_samples` calls of a signature.
    TUNE_EAGER = "tune_eager"
    #: Record samples only; tuning runs inside `aitune.torch.jit.tune.deferred()` or at its exit.
    TUNE_DEFERRED = "tune_deferred"
    #: Record and report the modules and signatures; never compile.
    INSPECT = "inspect"


DEFAULT_EXCLUDE_PACKAGES = ("torch._", "torch.fx", "torch.jit", "torch.ao", "torch.export", "torch.onnx",
                            "torch.utils", "torch_tensorrt", "aitune")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "OFF")


def _backend_name(name: str) -> str:
    # Names are class names; forgive case ("torcheagerbackend") when exactly one registered name matches.
    name = name.strip()
    if name not in backend_names():
        matches = [known for known in backend_names() if known.lower() == name.lower()]
        if len(matches) == 1:
            return matches[0]
    return name


def _to_backend(index: int, item: Any) -> Backend:
    """One `backends` item to a Backend whose optional library is installed (else the install command)."""
    backend = _make_backend(index, item)
    missing = backend.unavailable_reason()
    if missing is not None:
        raise SettingItemError(f"backends[{index}]: {missing}", index=index)
    return backend


def _make_backend(index: int, item: Any) -> Backend:
    """One `backends` item (instance, class, registered name, or {"name": ..., <options>}) to a Backend."""
    if isinstance(item, Backend):
        return item
    if isinstance(item, type) and issubclass(item, Backend):
        return item()
    if isinstance(item, str):
        name, options = _backend_name(item), {}
    elif isinstance(item, Mapping):
        options = dict(item)
        raw_name = options.pop("name", None)
        if not isinstance(raw_name, str):
            raise SettingItemError(f"backends[{index}] needs a 'name' naming a registered backend "
                                   f"({', '.join(backend_names())})", index=index)
        name = _backend_name(raw_name)
    else:
        raise SettingItemError(f"backends[{index}]: {item!r} is not a backend name, table or Backend", index=index)
    try:
        return create_backend(name, options)
    except UnknownBackendError:  # the registered names are listed once, in the error's "accepted" line
        raise SettingItemError(f"backends[{index}]: unknown backend {name!r}.{closest_backend_hint(name)}",
                               index=index) from None
    except ValidationError as exc:
        first = exc.errors()[0].get("loc", ())
        allowed = ", ".join(get_backend_class(name).config_class.model_fields) or "none"
        raise SettingItemError(f"backends[{index}] {name} option {summarize_validation_error(exc, title='')} "
                               f"({name} options: {allowed})", index=index,
                               key=str(first[0]) if first else None) from None
    except TypeError as exc:
        raise SettingItemError(f"backends[{index}] {name}: {exc}", index=index) from None


def _string_list(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        return [part.strip() if isinstance(part, str) else part for part in value]
    return value


class JITConfig(TrackedSettings):
    """Settings of the JIT hook."""

    model_config = SettingsConfigDict(env_prefix="AITUNE_JIT_")
    scope_label: ClassVar[str] = "JIT"

    mode: JITMode = Field(default=JITMode.TUNE_EAGER, description="What the hook does with the modules it finds.")
    backends: list[Backend] | None = Field(
        default=None,
        description="Candidate backends, tried in order. None: the defaults chosen for the device. Items are "
                    "Backend instances, registered names, or {'name': ..., <options>} mappings.")
    strategy: Any = Field(
        default="highest_throughput",
        description="How a winner is picked: one of " + ", ".join(STRATEGY_NAMES) + ", or an object with a "
                    "callable `tune` attribute (an aitune.torch.tune_strategy strategy); None: the default.",
        json_schema_extra={"accepted": "one of " + ", ".join(STRATEGY_NAMES) + " (case-insensitive), or an "
                                       "object with a callable tune() method, e.g. FirstWinsStrategy()"})
    min_samples: int = Field(default=3, ge=1, description="Calls of a signature recorded before it is tuned.")
    max_depth_level: int = Field(
        default=2, ge=0, description="How many levels below a top module may be tried when the parent stays eager.")
    min_parameters: int = Field(
        default=1, ge=0, description="Modules with fewer parameters (counted recursively) are not tuned.")
    skip_modules: list[str] = Field(
        default_factory=list,
        description="Class names (BertEmbeddings) or qualified names (transformers.models.bert.modeling_bert."
                    "BertEmbeddings) of modules never tuned.",
        json_schema_extra={"accepted": "a list of class names or qualified class names; from env a comma list "
                                       "or a JSON list"})
    exclude_packages: list[str] = Field(
        default_factory=lambda: list(DEFAULT_EXCLUDE_PACKAGES),
        description="Module-path prefixes whose modules are not tracked at all.",
        json_schema_extra={"accepted": "a list of module-path prefixes (e.g. torch.fx); from env a comma list "
                                       "or a JSON list"})
    patch_exclude: list[str] = Field(
        default_factory=list,
        description="Package prefixes (diffusers.models) or qualified class names (mylib.Net) whose modules are not "
                    "tracked at all, added to exclude_packages (NVIDIA AITune's name).",
        json_schema_extra={"accepted": "a list of package prefixes or qualified class names; from env a comma list "
                                       "or a JSON list"})
    device: str | None = Field(
        default=None,
        description="Tune only calls that run on this device (cuda, cuda:1, cpu); others run eagerly, with the "
                    "reason in the report. None: calls on any device. aitune never moves a module.")
    batch_axis_required: bool = Field(
        default=False,
        description="With min_samples > 1, tune a signature only once its calls have shown a dimension that varies "
                    "(a second batch size), so the engine covers both; the call with the new size is kept as a "
                    "sample. NVIDIA AITune's default is True; here False (tune after min_samples calls).")
    dry_run: bool = Field(
        default=False,
        description="Record, and for each signature say which backends would be tried (and which not, and why), "
                    "without building any; every module then runs eagerly.")
    detect_graph_breaks: bool = Field(
        default=False,
        description="Before building, trace each module once (Dynamo, nothing compiled): a module whose forward "
                    "breaks into several graphs is not tuned whole, its children are tried, and the report names "
                    "the breaks.")
    report: Path | None = Field(
        default=None, description="Path of the JSON report written at exit (kept current while tuning).",
        json_schema_extra={"accepted": "a file path (relative paths resolve against the working directory at "
                                       "load), or empty for no report"})
    summary: bool = Field(default=True, description="Print the summary table on stderr at exit.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "OFF"] = Field(
        default="INFO", description="Level of the stderr log handler the JIT mode installs on the `aitune` logger.",
        json_schema_extra={"accepted": "one of " + ", ".join(_LOG_LEVELS) + " (case-insensitive)"})
    progress: bool = Field(default=True, description="Show progress lines while a long tuning runs.")
    background: bool = Field(
        default=False,
        description="Tune in one aitune worker thread while every call keeps running eagerly; a module switches to "
                    "its engine once it is decided (aitune.torch.jit.wait() waits for the queue). CUDA graphs are "
                    "captured on the script's own calls after the switch; torch.export candidates are not tried.")
    cache_dir: Path | None = Field(
        default=None,
        description="Directory of the persistent cache: each module's decision and saved engine are reused by "
                    "later runs of the same script instead of tuning again. It must be yours and not writable by "
                    "others; aitune uses a new or empty directory (and marks it) or one it marked before. "
                    "Unset: no persistent cache.",
        json_schema_extra={"accepted": "a directory path (created if missing), or empty for no cache"})
    cache_secret_file: Path | None = Field(
        default=None,
        description="The per-user secret that signs cache entries (created on first use, mode 0600; it must lie "
                    "outside the cache directory). Unset: ~/.config/aitune/cache-secret (under XDG_CONFIG_HOME "
                    "when that is set).",
        json_schema_extra={"accepted": "a file path, or empty for the default"})
    max_tunings: int | None = Field(
        default=64, ge=0,
        description="Tunings (signatures tuned, not counting decisions reused from the cache) per process; past it "
                    "new signatures stay eager, with one log line. None: no limit.")
    max_tuning_seconds: float | None = Field(
        default=1800.0, ge=0,
        description="Seconds spent tuning per process; past it new signatures stay eager, with one log line. "
                    "None: no limit.")
    cache_max_bytes: int = Field(
        default=10 << 30, ge=0,
        description="Size budget of the cache's saved engines; least recently used entries are evicted past it.",
        json_schema_extra={"accepted": "a byte count >= 0: an integer or a size such as 500MB or 20GiB"})

    @classmethod
    def accepted_values(cls, field_name: str) -> str:
        if field_name == "backends":
            return ("a list of registered backend names (env: comma list or JSON list), Backend instances, or "
                    "tables/mappings with name and that backend's options; unset for the device defaults. "
                    + known_backends_text())
        if field_name == "mode":
            return ("one of " + ", ".join(m.value for m in JITMode) + " (case-insensitive; "
                    + ", ".join(m.name for m in JITMode) + " also work)")
        return super().accepted_values(field_name)

    @field_validator("device", mode="before")
    @classmethod
    def _parse_device(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        import torch

        try:
            return str(torch.device(value))
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"{value!r} is not a device (e.g. cuda, cuda:0, cpu): {e}") from None

    @field_validator("mode", mode="before")
    @classmethod
    def _parse_mode(cls, value: Any) -> Any:
        if isinstance(value, str) and not isinstance(value, JITMode):
            key = value.strip().lower()
            for member in JITMode:
                if key in (member.value, member.name.lower()):
                    return member
            raise ValueError(f"unknown JIT mode {value!r}")
        return value

    @field_validator("backends", mode="before")
    @classmethod
    def _build_backends(cls, value: Any) -> list[Backend] | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = _string_list(value)
        elif isinstance(value, (Backend, Mapping, type)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list of backends, got {type(value).__name__}")
        if not value:
            raise ValueError("an empty list would tune nothing; leave backends unset for the device defaults")
        built, errors = [], []
        for index, item in enumerate(value):  # every bad item is named at once, not one per attempt
            try:
                built.append(_to_backend(index, item))
            except SettingItemError as exc:
                errors.append(exc)
        if len(errors) > 1:
            raise SettingItemError("; ".join(map(str, errors)), index=errors[0].index, key=errors[0].key)
        if errors:
            raise errors[0]
        return built

    @field_validator("strategy", mode="before")
    @classmethod
    def _check_strategy(cls, value: Any) -> Any:
        if value is None:  # as AITune documents it: the default strategy
            return "highest_throughput"
        if isinstance(value, str):
            key = value.strip().lower().replace("-", "_")
            if key in STRATEGY_NAMES:
                return key
            raise ValueError(f"unknown strategy {value!r}")
        if isinstance(value, type):
            raise ValueError(f"{value.__name__} is a class; pass an instance, e.g. {value.__name__}()")
        if not callable(getattr(value, "tune", None)):
            raise ValueError(f"{type(value).__name__} has no callable tune() method")
        return value

    @field_validator("skip_modules", "exclude_packages", mode="before")
    @classmethod
    def _parse_names(cls, value: Any) -> Any:
        return _string_list(value)

    @field_validator("report", mode="before")
    @classmethod
    def _parse_report(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, (str, Path)):
            # Resolved now: a script that changes directory must not move the report.
            try:
                return Path(value).expanduser().absolute()
            except RuntimeError as e:  # `~user` of no user
                raise ValueError(f"cannot expand '~' in {str(value)!r} ({e})") from None
        return value

    @field_validator("cache_dir", "cache_secret_file", mode="before")
    @classmethod
    def _parse_cache_dir(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, (str, Path)):
            try:
                return Path(value).expanduser().absolute()
            except RuntimeError:
                # `~user` of no user: kept as given; opening the cache then says so once and the script runs on.
                return Path(value)
        return value

    @field_validator("cache_max_bytes", mode="before")
    @classmethod
    def _parse_cache_bytes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_byte_size(value)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _parse_level(cls, value: Any) -> Any:
        if isinstance(value, str):
            level = value.strip().upper()
            return "WARNING" if level == "WARN" else level
        return value

    @field_serializer("backends", when_used="json")
    def _dump_backends(self, value: list[Backend] | None) -> list[dict[str, Any]] | None:
        return None if value is None else [{"name": b.name, **b.engine_settings()} for b in value]

    @field_serializer("strategy", when_used="json")
    def _dump_strategy(self, value: Any) -> str:
        return value if isinstance(value, str) else type(value).__name__


#: The JIT settings singleton. Keep a reference freely: loads update it in place.
config = JITConfig()
register_scope(config, toml_table=None, py_name="config", namespace={"JITMode": JITMode})
# `from aitune.torch.jit import config; config.min_samples = 1` (this module used as the object) sets the setting.
settings_module(__name__)


class _View:
    """The JIT and global settings as the JIT front reads them: always the live objects (so a user's
    `config.min_samples = 5` after enabling applies), consulted only on the slow path (discovery, recording,
    tuning), never for a module that passes straight through."""

    @property
    def mode(self) -> str:
        return str(getattr(config.mode, "value", config.mode))

    @property
    def tune_eagerly(self) -> bool:
        return self.mode == "tune_eager"

    @property
    def record_nested(self) -> bool:
        """In deferred and inspect modes every level records at once, so a parent that stays eager does not
        leave its children without samples."""
        return self.mode != "tune_eager"

    @property
    def min_samples(self) -> int:
        return int(config.min_samples)

    @property
    def max_depth_level(self) -> int:
        return int(config.max_depth_level)

    @property
    def min_parameters(self) -> int:
        return int(config.min_parameters)

    @property
    def skip_modules(self) -> list[str]:
        return list(config.skip_modules)

    @property
    def exclude_packages(self) -> list[str]:
        return list(config.exclude_packages)

    @property
    def patch_exclude(self) -> list[str]:
        return list(config.patch_exclude)

    @property
    def device(self) -> str | None:
        return config.device

    @property
    def batch_axis_required(self) -> bool:
        return bool(config.batch_axis_required)

    @property
    def dry_run(self) -> bool:
        return bool(config.dry_run)

    @property
    def detect_graph_breaks(self) -> bool:
        return bool(config.detect_graph_breaks)

    @property
    def report(self) -> Path | None:
        return config.report

    @property
    def summary(self) -> bool:
        return bool(config.summary)

    @property
    def progress(self) -> bool:
        return bool(config.progress)

    @property
    def background(self) -> bool:
        return bool(config.background)

    @property
    def silenced(self) -> bool:
        """`log_level` OFF and `summary` left at its default: aitune prints nothing at all."""
        return str(config.log_level).upper() == "OFF" and config.setting_sources().get("summary") == "default"

    @property
    def max_num_samples_stored(self) -> int:
        return int(global_config.max_num_samples_stored)

    @property
    def max_samples_bytes(self) -> int:
        return int(global_config.max_samples_bytes)

    @property
    def strict(self) -> bool:
        return bool(global_config.strict)


#: What the JIT front reads its settings through.
SETTINGS = _View()


def load_jit_config() -> None:
    """Re-read all sources into `config` (and the global settings) in place; fields set from code are kept.

    Called by the hook at enable time. Raises `aitune.torch._errors.ConfigError` naming the field, its source
    (env var, or file and line) and what is accepted; the settings are then left as they were.
    """
    load_settings()


__all__ = ["DEFAULT_EXCLUDE_PACKAGES", "SETTINGS", "JITConfig", "JITMode", "config", "load_jit_config"]
