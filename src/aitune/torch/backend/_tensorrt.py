"""TensorRTBackend: export to ONNX (optionally through ModelOpt), build a TensorRT engine, run it.

The build half needs no GPU: ONNX file -> parsed network (strongly typed where the library has the flag) ->
builder config (workspace, optimization level, hardware compatibility, TF32, timing cache) -> optimization
profiles -> serialized plan bytes (`build_plan`). The run half lives in `_tensorrt_runtime`.

The library is `tensorrt` when installed, else `tensorrt_rtx` (TensorRT for RTX: the same Builder, Network and
OnnxParser API; strongly typed networks only; it ignores timing caches and hardware compatibility levels).
Precision comes from the ONNX graph (fp32 as exported; fp16/bf16 through ONNXAutoCastConfig; int8/fp8/int4 QDQ
through the ModelOpt quantization configs), since networks are built strongly typed.

Known limits: TensorRT-RTX cannot run engines on Hopper GPUs (compute capability 9.0); an engine plan runs only
with the library (and version) that built it, on GPUs its compatibility level allows.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from aitune.torch._errors import TensorRTBuildError
from aitune.torch._samples import Sample, SignatureRecord
from aitune.torch.backend._base import Backend, BackendConfig, Engine
from aitune.torch.backend._flat import FlatIO
from aitune.torch.backend._onnx import export_onnx
from aitune.torch.backend._optional import first_installed, missing_reason, require
from aitune.torch.backend._quantization import (
    ONNXAutoCastConfig,
    ONNXQuantizationConfig,
    TorchQuantizationConfig,
    autocast_onnx,
    describe_quantization,
    quantization_from_data,
    quantize_module,
    quantize_onnx,
)
from aitune.torch.backend._tensorrt_profiles import ProfileMode, TensorRTProfile, derive_profiles, uncovered_shape_sets
from aitune.torch.backend._tensorrt_runtime import (
    META_FILE,
    PLAN_FILE,
    EngineMeta,
    TensorRTEngine,
    deserialize,
    trt_logger,
)

logger = logging.getLogger(__name__)

_BACKEND = "TensorRTBackend"
_LIBRARIES = ("tensorrt", "tensorrt_rtx")
_COMPAT_LEVELS = {"none": "NONE", "ampere_plus": "AMPERE_PLUS", "same_compute_capability": "SAME_COMPUTE_CAPABILITY"}
#: GPUs TensorRT-RTX is known not to run engines on (measured on this project's H100/H200 machine).
_RTX_UNSUPPORTED_CAPABILITIES = {(9, 0)}


def quantize_and_export(module: torch.nn.Module, samples: Sequence[Sample], path: Path,
                        config: TorchQuantizationConfig, *, use_dynamo: bool, opset_version: int | None) -> FlatIO:
    """Quantize a copy of `module` with ModelOpt (`quantize_module`) and export it to ONNX at `path`."""
    quantized, moved = quantize_module(module, samples, config)
    try:
        return export_onnx(quantized, moved, path, use_dynamo=use_dynamo, opset_version=opset_version)
    finally:
        del quantized


class TensorRTBackendConfig(BackendConfig):
    """Settings of the ONNX export, the optional ModelOpt step, the TensorRT build and the engine's execution."""

    use_dynamo: bool = Field(default=True, description="Export with torch.export (dynamo); False: the "
                             "TorchScript-based exporter.")
    workspace_size: int | None = Field(default=None, ge=0, description="Builder workspace limit in bytes; None: "
                                       "TensorRT's default (the GPU's memory).")
    opset_version: int | None = Field(default=None, description="ONNX opset; None: the exporter's default.")
    optimization_level: int | None = Field(default=None, ge=0, le=5, description="Builder optimization level 0-5 "
                                           "(higher: longer builds, maybe faster engines); None: TensorRT's (3).")
    compatibility_level: Literal["none", "ampere_plus", "same_compute_capability"] | None = Field(
        default=None, description="Hardware compatibility of the plan (TensorRT's HardwareCompatibilityLevel); "
        "None: TensorRT's default (this GPU's architecture).")
    timing_cache: Path | None = Field(default=None, description="Timing cache file: read when it exists, written "
                                      "back (atomically) after each build, to speed up later builds.")
    profiles: ProfileMode | list[TensorRTProfile] = Field(
        default=ProfileMode.SINGLE, description="Optimization profiles: a ProfileMode deriving them from the "
        "recorded samples, or explicit TensorRTProfile objects.")
    device: str = Field(default="cuda", description="CUDA device of the engine; 'cuda': the module's device.")
    quantization_config: ONNXAutoCastConfig | ONNXQuantizationConfig | TorchQuantizationConfig | None = Field(
        default=None, description="Reduced precision through ModelOpt (needs aitune[modelopt]); None: the "
        "exported precision.")
    enable_tf32: bool = Field(default=True, description="Allow TF32 tensor cores for fp32 math.")
    use_cuda_graphs: bool = Field(default=False, description="Replay each input shape set's work as a CUDA graph "
                                  "(less launch overhead for small batches).")

    @field_validator("compatibility_level", mode="before")
    @classmethod
    def _compat_names(cls, value: Any) -> Any:
        # Accept TensorRT's enum member or its name in any spelling: "AMPERE_PLUS", "ampere+", "same-compute-...".
        name = getattr(value, "name", value)
        if isinstance(name, str):
            key = name.strip().lower().replace("-", "_")
            return "ampere_plus" if key == "ampere+" else key
        return value

    @field_validator("profiles")
    @classmethod
    def _some_profiles(cls, value: ProfileMode | list[TensorRTProfile]) -> ProfileMode | list[TensorRTProfile]:
        if isinstance(value, list):
            if not value:
                raise ValueError("an empty profile list serves no shape; leave profiles unset for ProfileMode.SINGLE")
            empty = [i for i, p in enumerate(value) if not p.shapes]
            if empty:
                raise ValueError(f"profile(s) {empty} have no input shape; use add_input_shape(name, min, opt, max)")
        return value

    @field_validator("timing_cache")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser()

    @field_validator("quantization_config", mode="before")
    @classmethod
    def _typed_dict(cls, value: Any) -> Any:
        return quantization_from_data(value)

    @field_validator("device")
    @classmethod
    def _cuda_device(cls, value: str) -> str:
        if torch.device(value).type != "cuda":
            raise ValueError(f"TensorRT engines run on CUDA devices; got {value!r} (use 'cuda' or 'cuda:N')")
        return value


# --- the library ---------------------------------------------------------------------------------------------


def tensorrt_library() -> Any:
    """The TensorRT module: `tensorrt` when installed, else `tensorrt_rtx`; BackendUnavailableError if neither."""
    return require(_BACKEND, "tensorrt", *_LIBRARIES)


def library_version(trt: Any) -> str:
    return str(getattr(trt, "__version__", "unknown"))


def _is_rtx(trt: Any) -> bool:
    return str(trt.__name__).startswith("tensorrt_rtx")


# --- the build half (no GPU needed) --------------------------------------------------------------------------


@dataclass
class ParsedNetwork:
    """A network with the parser and builder that own its memory (they must outlive the build)."""

    builder: Any
    network: Any
    parser: Any
    input_names: list[str]
    output_names: list[str]


@dataclass
class BuildResult:
    plan: bytes
    #: The profiles as set on the builder: restricted to the network's inputs.
    profiles: list[TensorRTProfile]
    input_names: list[str]
    output_names: list[str]
    timing_cache_loaded: bool


def parse_onnx(trt: Any, onnx_path: Path) -> ParsedNetwork:
    """Parse an ONNX file (weights may lie beside it) into a strongly typed network where the library can."""
    log = trt_logger(trt)
    builder = trt.Builder(log)
    flags = 0
    kinds = trt.NetworkDefinitionCreationFlag
    if hasattr(kinds, "STRONGLY_TYPED"):
        flags |= 1 << int(kinds.STRONGLY_TYPED)
    elif hasattr(kinds, "EXPLICIT_BATCH"):  # TensorRT 8
        flags |= 1 << int(kinds.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        messages = [str(parser.get_error(i)) for i in range(parser.num_errors)] or list(log.errors)
        raise TensorRTBuildError(f"{trt.__name__} could not parse {onnx_path.name}: " + "; ".join(messages))
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    return ParsedNetwork(builder, network, parser, inputs, outputs)


def add_profiles(parsed: ParsedNetwork, builder_config: Any, profiles: Sequence[TensorRTProfile]
                 ) -> list[TensorRTProfile]:
    """Add `profiles` for the network's inputs; returns them restricted to those inputs (what the engine serves)."""
    network_shapes = {parsed.network.get_input(i).name: tuple(parsed.network.get_input(i).shape)
                      for i in range(parsed.network.num_inputs)}
    effective = []
    for index, profile in enumerate(profiles):
        trt_profile = parsed.builder.create_optimization_profile()
        shapes = {}
        for name, static in network_shapes.items():
            given = profile.shapes.get(name)
            if given is None:
                if any(d < 0 for d in static):
                    raise TensorRTBuildError(f"profile {index} has no shape for network input {name!r} "
                                             f"(dynamic shape {list(static)})")
                continue
            lo, opt, hi = given
            fits = len(lo) == len(static) and all(d < 0 or a == b == c == d for a, b, c, d in zip(lo, opt, hi, static))
            if not fits:
                raise TensorRTBuildError(f"profile {index}, input {name!r}: min {list(lo)} / opt {list(opt)} / max "
                                         f"{list(hi)} do not fit the network's shape {list(static)} (-1: dynamic)")
            trt_profile.set_shape(name, lo, opt, hi)
            shapes[name] = given
        if builder_config.add_optimization_profile(trt_profile) < 0:
            raise TensorRTBuildError(f"TensorRT rejected optimization profile {index}: "
                                     f"{TensorRTProfile(shapes=shapes).describe()}")
        effective.append(TensorRTProfile(shapes=shapes))
        logger.info("TensorRT optimization profile %d: %s", index, effective[-1].describe())
    return effective


def configure_builder(trt: Any, parsed: ParsedNetwork, config: TensorRTBackendConfig) -> Any:
    """A builder config with the workspace, optimization level, compatibility level and TF32 settings."""
    builder_config = parsed.builder.create_builder_config()
    if config.workspace_size is not None:
        builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_size)
    if config.optimization_level is not None:
        builder_config.builder_optimization_level = config.optimization_level
    if config.compatibility_level is not None:
        if _is_rtx(trt):
            logger.info("%s has no hardware compatibility levels; compatibility_level=%r is ignored", trt.__name__,
                        config.compatibility_level)
        else:
            builder_config.hardware_compatibility_level = getattr(
                trt.HardwareCompatibilityLevel, _COMPAT_LEVELS[config.compatibility_level])
    if hasattr(trt.BuilderFlag, "TF32"):
        if config.enable_tf32:
            builder_config.set_flag(trt.BuilderFlag.TF32)
        else:
            builder_config.clear_flag(trt.BuilderFlag.TF32)
    return builder_config


def attach_timing_cache(builder_config: Any, path: Path | None) -> tuple[Any, bool]:
    """Create the builder's timing cache from `path` when it exists; (cache, whether the file was used).

    An unreadable cache, or one made on another GPU or TensorRT version, is replaced by an empty one.
    """
    if path is None:
        return None, False
    data = path.read_bytes() if path.is_file() else b""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TensorRT-RTX: timing caches are no-ops there
        cache = None
        if data:
            try:
                cache = builder_config.create_timing_cache(data)
            except Exception as e:  # noqa: BLE001 - a bad cache only costs build time
                logger.debug("timing cache %s: %s", path, e)
            if cache is not None and not builder_config.set_timing_cache(cache, ignore_mismatch=False):
                cache = None
            if cache is None:
                logger.warning("TensorRT timing cache %s could not be used (corrupt, or from another GPU or "
                               "TensorRT version); starting an empty one", path)
        if cache is not None:
            logger.debug("read TensorRT timing cache %s (%d bytes)", path, len(data))
            return cache, True
        cache = builder_config.create_timing_cache(b"")
        builder_config.set_timing_cache(cache, ignore_mismatch=False)
    return cache, False


def write_timing_cache(builder_config: Any, path: Path) -> None:
    """Write the builder's timing cache to `path` atomically (a reader never sees half a file)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        data = bytes(memoryview(builder_config.get_timing_cache().serialize()))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.debug("wrote TensorRT timing cache %s (%d bytes)", path, len(data))


def build_plan(onnx_path: Path, profiles: Sequence[TensorRTProfile], config: TensorRTBackendConfig,
               trt: Any = None) -> BuildResult:
    """ONNX file -> serialized TensorRT plan. Needs the library, not a GPU (TensorRT-RTX builds on a CPU)."""
    trt = trt if trt is not None else tensorrt_library()
    parsed = parse_onnx(trt, onnx_path)
    builder_config = configure_builder(trt, parsed, config)
    effective = add_profiles(parsed, builder_config, profiles)
    cache, loaded = attach_timing_cache(builder_config, config.timing_cache)
    log = trt_logger(trt)
    log.errors.clear()
    plan = parsed.builder.build_serialized_network(parsed.network, builder_config)
    if plan is None:
        raise TensorRTBuildError(f"{trt.__name__} could not build an engine from {onnx_path.name}: "
                                 + ("; ".join(log.errors) or "no message from TensorRT"))
    if config.timing_cache is not None and cache is not None:
        try:
            write_timing_cache(builder_config, config.timing_cache)
        except OSError as e:
            logger.warning("could not write the TensorRT timing cache %s: %s", config.timing_cache, e)
    return BuildResult(bytes(memoryview(plan)), effective, parsed.input_names, parsed.output_names, loaded)


# --- the backend ---------------------------------------------------------------------------------------------


class TensorRTBackend(Backend):
    """ONNX export (optionally ModelOpt quantization), a TensorRT engine build, and the engine run from torch."""

    config_class = TensorRTBackendConfig
    kind = "aot"
    device_types = ("cuda",)
    extra = "tensorrt"
    bakes_weights = True

    config: TensorRTBackendConfig

    def exports_program(self) -> bool:
        return bool(self.config.use_dynamo)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return missing_reason(_BACKEND, "tensorrt", *_LIBRARIES) or missing_reason(_BACKEND, "tensorrt", "onnx")

    def engine_settings(self) -> dict[str, Any]:
        settings = self.config.model_dump(mode="json")
        settings["quantization_config"] = describe_quantization(self.config.quantization_config)
        return settings

    def _target(self, device: torch.device) -> torch.device:
        configured = torch.device(self.config.device)
        if configured.index is not None:
            return configured
        return torch.device("cuda", device.index if device.type == "cuda" and device.index is not None
                            else torch.cuda.current_device())

    def unsupported_reason(self, device: torch.device) -> str | None:
        reason = super().unsupported_reason(device)
        if reason is not None:
            return reason
        configured = torch.device(self.config.device)
        if configured.index is not None and device.index is not None and configured.index != device.index:
            return f"the module is on {device} but TensorRTBackend is configured for {configured}"
        if self.config.quantization_config is not None:
            reason = missing_reason(f"{_BACKEND} with {type(self.config.quantization_config).__name__}", "modelopt",
                                    "modelopt")
            if reason is not None:
                return reason
        if first_installed(*_LIBRARIES) == "tensorrt_rtx" and torch.cuda.is_available():
            capability = torch.cuda.get_device_capability(self._target(device))
            if capability in _RTX_UNSUPPORTED_CAPABILITIES:
                return (f"only TensorRT-RTX is installed, and it cannot run engines on compute capability "
                        f"{capability[0]}.{capability[1]}; install TensorRT: pip install 'aitune[tensorrt]'")
        return None

    def export(self, module: torch.nn.Module, samples: Sequence[Sample], work: Path) -> tuple[Path, FlatIO]:
        """The ONNX model TensorRT parses: exported, then through the configured ModelOpt step."""
        quant = self.config.quantization_config
        exported = work / "model.onnx"
        if isinstance(quant, TorchQuantizationConfig):
            io = quantize_and_export(module, samples, exported, quant, use_dynamo=self.config.use_dynamo,
                                     opset_version=self.config.opset_version)
            return exported, io
        io = export_onnx(module, samples, exported, use_dynamo=self.config.use_dynamo,
                         opset_version=self.config.opset_version)
        if isinstance(quant, ONNXAutoCastConfig):
            (work / "modelopt").mkdir()
            return autocast_onnx(exported, work / "modelopt" / "model.onnx", quant, io, samples), io
        if isinstance(quant, ONNXQuantizationConfig):
            (work / "modelopt").mkdir()
            return quantize_onnx(exported, work / "modelopt" / "model.onnx", quant, io, samples), io
        return exported, io

    def build(self, module: torch.nn.Module, signature: SignatureRecord, samples: Sequence[Sample],
              device: torch.device) -> Engine:
        trt = tensorrt_library()
        target = self._target(device)
        owned = tempfile.TemporaryDirectory(prefix="aitune-trt-")
        try:
            root = Path(owned.name)
            (root / "onnx").mkdir()
            onnx_path, io = self.export(module, samples, root / "onnx")
            profiles = derive_profiles(self.config.profiles, io, samples)
            if self.config.profiles is ProfileMode.SAMPLES_USED and len(signature.shape_counts) > len(profiles):
                logger.warning("%s was called with %d input shape sets but only %d are among the stored samples; "
                               "the others will run eagerly (raise aitune's max_num_samples_stored)",
                               type(module).__name__, len(signature.shape_counts), len(profiles))
            result = build_plan(onnx_path, profiles, self.config, trt)
            missing = uncovered_shape_sets(result.profiles, io, samples)
            if missing:
                logger.warning("%d recorded input shape set(s) of %s lie outside every TensorRT profile and will run "
                               "eagerly: %s", len(missing), type(module).__name__, [list(s) for s in missing])
            shutil.rmtree(root / "onnx")  # the plan holds everything now; ONNX weights can be large
            (root / PLAN_FILE).write_bytes(result.plan)
            meta = EngineMeta(trt.__name__, library_version(trt), result.input_names, result.output_names,
                              result.profiles)
            (root / META_FILE).write_text(meta.to_json())
            runtime, engine = deserialize(trt, result.plan, target)
            built = TensorRTEngine(engine, io, meta, target, module, use_cuda_graphs=self.config.use_cuda_graphs,
                                   runtime=runtime, artifact_dir=root, owned_dir=owned)
            built.compute_dtype = self.compute_dtype()
            return built
        except BaseException:
            owned.cleanup()
            raise

    def load(self, directory: Path, module: torch.nn.Module, signature: SignatureRecord, samples: Sequence[Sample],
             device: torch.device, *, authenticated: bool = False) -> Engine:
        directory = Path(directory)
        if not (directory / PLAN_FILE).is_file() or not (directory / META_FILE).is_file():
            raise FileNotFoundError(f"no {PLAN_FILE} and {META_FILE} in {directory}")
        meta = EngineMeta.from_json((directory / META_FILE).read_text())
        trt = tensorrt_library()
        if trt.__name__ != meta.library or library_version(trt) != meta.library_version:
            raise RuntimeError(f"the engine in {directory} was built by {meta.library} {meta.library_version}; this "
                               f"process has {trt.__name__} {library_version(trt)}, which cannot run it: rebuild it")
        target = self._target(device)
        runtime, engine = deserialize(trt, (directory / PLAN_FILE).read_bytes(), target)
        loaded = TensorRTEngine(engine, FlatIO.from_samples(samples, module.forward), meta, target, module,
                                use_cuda_graphs=self.config.use_cuda_graphs, runtime=runtime, artifact_dir=directory)
        loaded.compute_dtype = self.compute_dtype()
        return loaded

    def uses_cuda_graphs(self, device: torch.device) -> bool:
        return bool(self.config.use_cuda_graphs)

    def compute_dtype(self) -> torch.dtype | None:
        """The reduced precision the quantization step computes in: outputs are checked against eager with the
        looser of its tolerance and the output dtype's (int8/fp8 recipes are checked at their high-precision
        dtype's tolerance; widen `tolerances` to accept more quantization error)."""
        quant = self.config.quantization_config
        if quant is None:
            return None
        name = quant.precision if isinstance(quant, ONNXAutoCastConfig) else getattr(quant, "high_precision_dtype",
                                                                                     "fp16")
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(name)
