"""Torch-TensorRT backends: `TorchTensorRTJitBackend` (torch.compile with backend="torch_tensorrt", rebuilt in
each process) and `TorchTensorRTAotBackend` (torch_tensorrt.compile on the recorded shape range, saved and
loaded as an ExportedProgram or a TorchScript file).

NEVER EXECUTED: torch_tensorrt (and TensorRT) cannot be installed on any machine of this workplace, so the code
paths that import torch_tensorrt were written against its documented API and have never run. What was run:
the settings and their mapping to Torch-TensorRT options, the min/opt/max input ranges, the flat adapter, the
torch.export of it that ir="dynamo" compiles (also on CUDA fp16, torch 2.11), the engine's flatten/rebuild glue
and the missing-library paths. The GPU tests are marked `gpu` and `tensorrt` and skip without the library.

How the AOT backend sees a module: through `_flat.FlatModule` (flat tensors in, a flat tuple of tensors out;
plain input values baked in; the output structure rebuilt from the first sample), so keyword and nested inputs
compile like positional ones. Each input gets a `torch_tensorrt.Input` spanning the recorded samples: min and
max per dimension, opt the signature's most common shapes (the most common sample shapes when those do not fit).
For ir="dynamo" we export the adapter ourselves (torch.export, each varying dimension bounded by its range) and
compile the ExportedProgram; for ir="ts" we trace it (torch.jit.trace) and compile the ScriptModule.

Known limits:
- `TorchTensorRTConfig.to_options()` sends only the fields the user set, so the installed release applies its
  own defaults; those have moved between releases (use_explicit_typing, enabled_precisions, debug).
- ir="ts" gets only the options `torch_tensorrt.ts.compile` names (truncate_double is renamed to its
  truncate_long_and_double); others are dropped with an INFO line. Tracing bakes in Python control flow.
- ir="fx" (deprecated by Torch-TensorRT) compiles the module itself: positional tensor inputs, a tensor or a
  tuple of tensors out, one static shape, enabled_precisions only; its engines cannot be saved.
- Torch-TensorRT documents its ExportedProgram format as needing its C++ runtime: engines built with
  use_python_runtime=True may fail to save or load on releases without Python-runtime serialization.
- A dimension of size 1 in opt but dynamic in the range may be specialized by torch.export (0/1 specialization).
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import logging
import pickle
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import torch
from pydantic import AliasChoices, Field, JsonValue, PlainValidator, WrapSerializer, field_validator, model_validator

from aitune.torch._samples import Sample, SignatureRecord
from aitune.torch.backend._base import Backend, BackendConfig, Engine
from aitune.torch.backend._flat import FlatIO, FlatModule
from aitune.torch.backend._inductor import (
    CompiledEngine,
    autocast_dtype_name,
    autocast_for,
    compile_on_samples,
    entry_point,
)
from aitune.torch.backend._optional import missing_reason, require

logger = logging.getLogger(__name__)

_MODULE = "torch_tensorrt"
_EXTRA = "torch-tensorrt"
_META_FILE = "torch_tensorrt.json"
_ARTIFACTS = {"dynamo": "engine.ep", "ts": "engine.ts"}

Precision = Literal["fp32", "fp16", "bf16", "int8", "fp8"]
PRECISION_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16,
                                            "bf16": torch.bfloat16, "int8": torch.int8,
                                            "fp8": torch.float8_e4m3fn}
_PRECISION_ALIASES = {"float32": "fp32", "float": "fp32", "f32": "fp32", "float16": "fp16", "half": "fp16",
                      "f16": "fp16", "bfloat16": "bf16", "i8": "int8", "float8_e4m3fn": "fp8", "f8": "fp8"}


def _torch_tensorrt(backend: str) -> Any:
    return require(backend, _EXTRA, _MODULE)


class TorchTensorRTConfig(BackendConfig):
    """The common Torch-TensorRT compilation settings, with the names and defaults of
    `torch_tensorrt.dynamo.CompilationSettings`. Importable without torch_tensorrt."""

    enabled_precisions: tuple[Precision, ...] = Field(
        default=("fp32",), description="Kernel precisions TensorRT may choose from: fp32, fp16, bf16, int8, fp8 "
        "(torch dtype names such as 'float16' are accepted). Ignored by releases that type explicitly.")
    workspace_size: int = Field(default=0, ge=0, description="Builder workspace in bytes; 0: TensorRT's default.")
    min_block_size: int = Field(default=5, ge=1, description="Fewest consecutive convertible operators that form "
                                "a TensorRT engine; smaller runs stay in PyTorch.")
    torch_executed_ops: tuple[str, ...] = Field(
        default=(), description="Operators forced to run in PyTorch, e.g. 'torch.ops.aten.add.Tensor'.")
    optimization_level: int | None = Field(default=None, ge=0, le=5, description="Builder optimization level "
                                           "0-5 (longer builds search more); None: TensorRT's default (3).")
    truncate_double: bool = Field(
        default=False, validation_alias=AliasChoices("truncate_double", "truncate_long_and_double"),
        description="Truncate float64 inputs and weights to float32 (older name: truncate_long_and_double).")
    use_python_runtime: bool | None = Field(default=False, description="Run engines with the Python runtime; "
                                            "None: the C++ runtime when it is installed.")
    use_fast_partitioner: bool = Field(default=True, description="Fast partitioner; False: the global one.")
    require_full_compilation: bool = Field(default=False, description="Fail unless the whole graph converts "
                                           "(ir='dynamo' and 'ts'; no effect under torch.compile).")
    pass_through_build_failures: bool = Field(default=False, description="Raise on engine build errors instead "
                                              "of running the subgraph in PyTorch.")
    debug: bool = Field(default=False, description="Verbose Torch-TensorRT logs (deprecated by recent releases "
                        "in favour of torch_tensorrt.dynamo.Debugger).")
    use_explicit_typing: bool | None = Field(default=None, description="Respect the model's dtypes (strong "
                                             "typing); None: the installed release's default.")
    use_fp32_acc: bool = Field(default=False, description="Accumulate matmuls in fp32 (with fp16 precision).")
    disable_tf32: bool = Field(default=False, description="Disable TF32 for fp32 layers.")
    immutable_weights: bool = Field(default=True, description="Build non-refittable engines; the engine cache "
                                    "refits, so set False with cache_built_engines/reuse_cached_engines.")
    cache_built_engines: bool = Field(default=False, description="Store built engines in Torch-TensorRT's "
                                      "engine cache on disk.")
    reuse_cached_engines: bool = Field(default=False, description="Reuse engines from that cache.")
    version_compatible: bool = Field(default=False, description="Engines that later TensorRT versions can run.")
    hardware_compatible: bool = Field(default=False, description="Engines that run on other GPU architectures "
                                      "(Ampere and newer).")
    max_aux_streams: int | None = Field(default=None, ge=0, description="Auxiliary streams per engine; None: "
                                        "TensorRT decides.")
    extra_options: dict[str, JsonValue] = Field(
        default_factory=dict, description="Further Torch-TensorRT settings passed as they are (for settings "
        "not mirrored here, or renamed by a release), e.g. {'sparse_weights': True}.")

    @field_validator("enabled_precisions", mode="before")
    @classmethod
    def _precision_names(cls, value: Any) -> Any:
        items = [value] if isinstance(value, (str, torch.dtype)) else list(value)
        names: list[str] = []
        for item in items:
            name = str(item).removeprefix("torch.").lower()
            name = _PRECISION_ALIASES.get(name, name)
            if name not in PRECISION_DTYPES:
                raise ValueError(f"unknown precision {item!r}; accepted: {', '.join(PRECISION_DTYPES)} "
                                 f"(or torch dtype names such as 'float16')")
            if name not in names:
                names.append(name)
        if not names:
            raise ValueError("enabled_precisions is empty; leave it unset for fp32")
        return tuple(names)

    @model_validator(mode="after")
    def _extra_options_do_not_shadow_fields(self) -> TorchTensorRTConfig:
        shadowed = sorted(set(self.extra_options) & (set(type(self).model_fields) | {"truncate_long_and_double"}))
        if shadowed:
            raise ValueError(f"extra_options repeats the field(s) {', '.join(shadowed)}; set them as fields")
        return self

    def to_options(self) -> dict[str, Any]:
        """The keyword options for torch.compile(options=...) and torch_tensorrt.compile(**options).

        Only the fields that were set (explicitly, even to their default value) are included: Torch-TensorRT
        applies its own defaults to the rest, which keeps us right when a release changes a default or drops
        a setting, and a release that does not know a setting never receives it unless the user asked.
        """
        options: dict[str, Any] = {}
        for name in sorted(self.model_fields_set - {"extra_options"}):
            value = getattr(self, name)
            if name == "enabled_precisions":
                value = {PRECISION_DTYPES[p] for p in value}
            elif name == "torch_executed_ops":
                value = set(value)
            options[name] = value
        options.update(self.extra_options)
        return options


def _as_compile_config(value: Any) -> Any:
    if isinstance(value, TorchTensorRTConfig):
        return value
    if isinstance(value, dict):
        return TorchTensorRTConfig.model_validate(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return value  # a torch_tensorrt.dynamo.CompilationSettings, used as it is
    raise ValueError(f"compile_config must be a TorchTensorRTConfig, a dict of its fields or a "
                     f"torch_tensorrt.dynamo.CompilationSettings, not {type(value).__name__}")


def _plain(value: Any) -> JsonValue:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v) for v in value), key=str)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # an __eq__ that cannot compare (tensors, odd objects): reported as changed
        return False


def settings_summary(settings: Any) -> dict[str, JsonValue]:
    """A JSON view of a CompilationSettings-like dataclass: its class and the fields that differ from a fresh
    instance (all fields when one cannot be made). Used in cache keys, the report and logs."""
    cls = type(settings)
    try:
        defaults: Any = cls()
    except Exception:  # a settings class without defaults: every field is then reported
        defaults = None
    out: dict[str, JsonValue] = {"settings_class": f"{cls.__module__}.{cls.__qualname__}"}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if defaults is None or not _same(value, getattr(defaults, f.name)):
            out[f.name] = _plain(value)
    return out


def _compile_config_json(value: Any, handler: Callable[[Any], Any]) -> Any:
    return handler(value) if isinstance(value, TorchTensorRTConfig) else settings_summary(value)


#: A TorchTensorRTConfig (or a dict of its fields), or a torch_tensorrt.dynamo.CompilationSettings instance.
CompileConfig = Annotated[Any, PlainValidator(_as_compile_config), WrapSerializer(_compile_config_json)]


def compile_options(config: Any) -> dict[str, Any]:
    """The Torch-TensorRT keyword options of a `CompileConfig` value."""
    if isinstance(config, TorchTensorRTConfig):
        return config.to_options()
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def _trt_device(trt: Any, device: torch.device) -> Any:
    index = device.index if device.index is not None else torch.cuda.current_device()
    return trt.Device(gpu_id=index)


class TorchTensorRTJitBackendConfig(BackendConfig):
    """Settings of torch.compile(backend="torch_tensorrt")."""

    compile_config: CompileConfig = Field(
        default=TorchTensorRTConfig(), description="Torch-TensorRT settings: a TorchTensorRTConfig, or a "
        "torch_tensorrt.dynamo.CompilationSettings whose every field is passed as an option.")
    fullgraph: bool = Field(default=False, description="Fail the candidate on any graph break.")
    dynamic_shapes: bool | None = Field(
        default=None, description="torch.compile's dynamic: True symbolic from the start, False static "
        "(recompile per shape), None automatic.")
    autocast_enabled: bool = Field(default=False, description="Run the engine under torch.autocast.")
    autocast_dtype: Literal["float16", "bfloat16"] | None = Field(
        default=None, description="Autocast dtype (default: float16); a name or a torch.dtype.")

    _autocast_dtype_name = field_validator("autocast_dtype", mode="before")(classmethod(
        lambda cls, value: autocast_dtype_name(value)))


class _JitEngine(CompiledEngine):
    # Torch-TensorRT turns the parameters into engine constants: in-place weight updates do not reach them.
    bakes_weights = True


class _TorchTensorRTBackend(Backend):
    """What both Torch-TensorRT backends share: CUDA only, the optional library, weights baked into engines."""

    device_types = ("cuda",)
    extra = _EXTRA
    bakes_weights = True

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return missing_reason(cls.__name__, _EXTRA, _MODULE)


class TorchTensorRTJitBackend(_TorchTensorRTBackend):
    """torch.compile with Torch-TensorRT's backend: TensorRT engines for the convertible subgraphs."""

    config_class = TorchTensorRTJitBackendConfig
    kind = "jit"

    config: TorchTensorRTJitBackendConfig

    def build(self, module: torch.nn.Module, signature: SignatureRecord, samples: Sequence[Sample],
              device: torch.device) -> Engine:
        trt = _torch_tensorrt(self.name)  # importing it registers the "torch_tensorrt" torch.compile backend
        cfg = self.config
        options = compile_options(cfg.compile_config)
        options.setdefault("device", _trt_device(trt, device))
        compiled = torch.compile(entry_point(module), backend="torch_tensorrt", options=options,
                                 dynamic=cfg.dynamic_shapes, fullgraph=cfg.fullgraph)
        autocast, compute_dtype = autocast_for(cfg.autocast_enabled, cfg.autocast_dtype, device)
        # Engines allocate fresh outputs on every call: nothing to copy.
        engine = _JitEngine(module, compiled, copy_outputs=False, autocast=autocast, compute_dtype=compute_dtype)
        # Build now, for every recorded shape, so no engine build is left for a user's call.
        return compile_on_samples(engine, samples)


class InputRange(NamedTuple):
    """The shape range of one flat input, for a torch_tensorrt.Input."""

    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    dtype: torch.dtype


def input_ranges(io: FlatIO, most_common: Sequence[Sequence[int]] | None = None) -> list[InputRange]:
    """Per flat input: min and max per dimension over the samples; opt `most_common` (the signature's most
    common shapes) when it fits every input's range, else the most common shapes among the samples.

    `most_common` comes in the signature's normalized input order; a call mixing keyword orders can disagree
    with the flat order, which the range check catches in all but the rarest cases and which only moves opt.
    """
    fits = most_common is not None and len(most_common) == len(io.shape_ranges) and all(
        len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi))
        for shape, (lo, _, hi) in zip(most_common, io.shape_ranges))
    ranges = []
    for i, ((lo, common, hi), dtype) in enumerate(zip(io.shape_ranges, io.input_dtypes)):
        opt = tuple(most_common[i]) if fits and most_common is not None else tuple(common)
        ranges.append(InputRange(tuple(lo), opt, tuple(hi), dtype))
    return ranges


def _trt_inputs(trt: Any, ranges: Sequence[InputRange]) -> list[Any]:
    return [trt.Input(shape=r.opt_shape, dtype=r.dtype) if r.min_shape == r.max_shape else
            trt.Input(min_shape=r.min_shape, opt_shape=r.opt_shape, max_shape=r.max_shape, dtype=r.dtype)
            for r in ranges]


def _example_inputs(io: FlatIO, samples: Sequence[Sample], ranges: Sequence[InputRange]) -> tuple[torch.Tensor, ...]:
    """The flat inputs of the sample at the opt shapes (of the first sample when none is)."""
    opt = [r.opt_shape for r in ranges]
    for sample in samples:
        flat = io.flatten(sample.args, sample.kwargs)
        if [tuple(t.shape) for t in flat] == opt:
            return tuple(flat)
    return tuple(io.flatten(samples[0].args, samples[0].kwargs))


def frontend_options(trt: Any, ir: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options the `ir` frontend takes: all for dynamo; for ts those `torch_tensorrt.ts.compile` names
    (truncate_double under its TorchScript name); for fx only enabled_precisions. Dropped ones are logged."""
    if ir == "dynamo":
        return dict(options)
    kept = dict(options)
    if ir == "fx":
        kept = {k: v for k, v in kept.items() if k == "enabled_precisions"}
    else:
        if "truncate_double" in kept:
            kept["truncate_long_and_double"] = kept.pop("truncate_double")
        ts_compile = getattr(getattr(trt, "ts", None), "compile", None)
        if ts_compile is not None:
            params = inspect.signature(ts_compile).parameters
            if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                kept = {k: v for k, v in kept.items() if k in params}
    renamed = {"truncate_double"} if "truncate_long_and_double" in kept else set()
    dropped = sorted(set(options) - set(kept) - renamed)
    if dropped:
        logger.info("Torch-TensorRT ir=%r does not take %s; dropped", ir, ", ".join(dropped))
    return kept


def export_flat(module: torch.nn.Module, io: FlatIO, example: tuple[torch.Tensor, ...],
                ranges: Sequence[InputRange]) -> torch.export.ExportedProgram:
    """torch.export of the flat adapter, each varying dimension bounded by its recorded range.

    Torch-TensorRT's own tracer names dynamic inputs after forward's parameters, which a `forward(*flat)`
    does not have; Dim.AUTO also lets torch.export find the dimensions that must be equal (the batch of
    input_ids and of attention_mask), which separately named Dims would reject.
    """
    auto = torch.export.Dim.AUTO
    specs = tuple({d: auto(min=lo, max=hi) for d, (lo, hi) in enumerate(zip(r.min_shape, r.max_shape)) if lo != hi}
                  for r in ranges)
    return torch.export.export(FlatModule(module, io), example, dynamic_shapes=(specs,), strict=False)


def _named_params(fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    params = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in params}


class _TorchTensorRTEngine(Engine):
    bakes_weights = True

    def __init__(self, compiled: Any, io: FlatIO, ir: str, ranges: Sequence[InputRange], device: torch.device,
                 pickle_protocol: int, source_dir: Path | None = None) -> None:
        self._compiled = compiled
        self._io = io
        self._ir = ir
        self._ranges = list(ranges)
        self._device = device
        self._pickle_protocol = pickle_protocol
        self._source_dir = source_dir  # a loaded engine saves by copying what it was loaded from

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self._compiled(*self._io.flatten(args, kwargs))
        return self._io.unflatten_outputs([out] if isinstance(out, torch.Tensor) else list(out))

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        if self._source_dir is not None:
            for name in (_META_FILE, _ARTIFACTS[self._ir]):
                if (self._source_dir / name).resolve() != (directory / name).resolve():
                    shutil.copy2(self._source_dir / name, directory / name)
            return
        if self._ir not in _ARTIFACTS:
            raise NotImplementedError("ir='fx' engines (Torch-TensorRT's deprecated FX frontend) have no artifact "
                                      "that loads without unpickling objects; use ir='dynamo' or 'ts' to save")
        path = directory / _ARTIFACTS[self._ir]
        if self._ir == "ts":
            torch.jit.save(self._compiled, str(path))
        else:
            trt = _torch_tensorrt("TorchTensorRTAotBackend")
            # retrace=False serializes the compiled graph as it is, symbolic (min..max) shapes included; the
            # example inputs only describe the opt shapes, so zeros do.
            example = [torch.zeros(r.opt_shape, dtype=r.dtype, device=self._device) for r in self._ranges]
            kwargs = _named_params(trt.save, {"output_format": "exported_program", "inputs": example,
                                              "retrace": False, "pickle_protocol": self._pickle_protocol})
            trt.save(self._compiled, str(path), **kwargs)
        meta = {"ir": self._ir, "file": path.name, "inputs": len(self._io.input_names),
                "outputs": len(self._io.output_names),
                "torch_tensorrt": getattr(sys.modules.get(_MODULE), "__version__", None)}
        (directory / _META_FILE).write_text(json.dumps(meta, indent=1))

    def release(self) -> None:
        self._compiled = None


class TorchTensorRTAotBackendConfig(BackendConfig):
    """Settings of torch_tensorrt.compile on the recorded shape range."""

    ir: Literal["dynamo", "ts", "fx"] = Field(default="dynamo", description="Torch-TensorRT frontend: dynamo "
                                              "(torch.export), ts (TorchScript) or fx (deprecated).")
    compile_config: CompileConfig = Field(
        default=TorchTensorRTConfig(), description="Torch-TensorRT settings: a TorchTensorRTConfig, or a "
        "torch_tensorrt.dynamo.CompilationSettings whose every field is passed as an option.")
    pickle_protocol: int = Field(default=2, ge=0, le=pickle.HIGHEST_PROTOCOL, description="Pickle protocol of "
                                 "the saved ExportedProgram (where torch_tensorrt.save takes one); 4+ for >4 GiB.")


class TorchTensorRTAotBackend(_TorchTensorRTBackend):
    """torch_tensorrt.compile ahead of time: TensorRT engines with baked weights, saved and loaded."""

    config_class = TorchTensorRTAotBackendConfig
    kind = "aot"
    #: torch.export.load unpickles parts of the saved program.
    artifact_runs_code = True

    config: TorchTensorRTAotBackendConfig

    def exports_program(self) -> bool:
        return True

    def build(self, module: torch.nn.Module, signature: SignatureRecord, samples: Sequence[Sample],
              device: torch.device) -> Engine:
        trt = _torch_tensorrt(self.name)
        cfg = self.config
        io = FlatIO.from_samples(samples, module.forward)
        ranges = input_ranges(io, signature.most_common_shapes)
        example = _example_inputs(io, samples, ranges)
        options = compile_options(cfg.compile_config)
        options.setdefault("device", _trt_device(trt, device))
        options = frontend_options(trt, cfg.ir, options)
        logger.debug("Torch-TensorRT ir=%s for %s: %s", cfg.ir, type(module).__name__, io.describe_inputs())
        with torch.no_grad():
            if cfg.ir == "fx":
                _check_fx(samples[0], ranges)
                compiled = trt.compile(module, ir="fx", inputs=list(example), **options)
            else:
                # FlatModule calls module.forward: aitune runs the hooks, its patched __call__ is not re-entered.
                target: Any = (export_flat(module, io, example, ranges) if cfg.ir == "dynamo" else
                               torch.jit.trace(FlatModule(module, io), example, check_trace=False))
                compiled = trt.compile(target, ir=cfg.ir, inputs=_trt_inputs(trt, ranges), **options)
        return _TorchTensorRTEngine(compiled, io, cfg.ir, ranges, device, cfg.pickle_protocol)

    def load(self, directory: Path, module: torch.nn.Module, signature: SignatureRecord, samples: Sequence[Sample],
             device: torch.device, *, authenticated: bool = False) -> Engine:
        trt = _torch_tensorrt(self.name)
        directory = Path(directory)
        meta_path = directory / _META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"no {_META_FILE} in {directory}")
        meta = json.loads(meta_path.read_text())
        ir = self.config.ir
        if meta.get("ir") != ir or meta.get("file") != _ARTIFACTS.get(ir):
            raise ValueError(f"{directory} holds a Torch-TensorRT ir={meta.get('ir')!r} artifact; this backend "
                             f"is configured for ir={ir!r}")
        io = FlatIO.from_samples(samples, module.forward)
        if (meta.get("inputs"), meta.get("outputs")) != (len(io.input_names), len(io.output_names)):
            raise ValueError(f"the engine in {directory} takes {meta.get('inputs')} inputs and returns "
                             f"{meta.get('outputs')} outputs; these samples have {len(io.input_names)} and "
                             f"{len(io.output_names)}")
        path = directory / _ARTIFACTS[ir]
        loaded: Any
        if ir == "ts":
            loaded = torch.jit.load(str(path), map_location=device)
        else:
            # torch_tensorrt.load registers the TensorRT ops the program calls before torch.export.load.
            loaded = getattr(trt, "load", torch.export.load)(str(path))
            if isinstance(loaded, torch.export.ExportedProgram):
                loaded = loaded.module()
        ranges = input_ranges(io, signature.most_common_shapes)
        return _TorchTensorRTEngine(loaded, io, ir, ranges, device, self.config.pickle_protocol, source_dir=directory)


def _check_fx(sample: Sample, ranges: Sequence[InputRange]) -> None:
    flat_in = not sample.kwargs and all(isinstance(a, torch.Tensor) for a in sample.args)
    out = sample.outputs
    flat_out = isinstance(out, torch.Tensor) or (
        type(out) is tuple and all(isinstance(t, torch.Tensor) for t in out))
    if not (flat_in and flat_out):
        raise ValueError("ir='fx' compiles only modules called with positional tensors that return a tensor or a "
                         "tuple of tensors; use ir='dynamo'")
    if any(r.min_shape != r.max_shape for r in ranges):
        raise ValueError("ir='fx' builds static-shape engines but the recorded input shapes vary; use ir='dynamo'")

