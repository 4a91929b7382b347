"""Reduced precision for the TensorRT backend through NVIDIA Model Optimizer (ModelOpt).

Three recipes, each a frozen config that imports nothing until it is applied:
- `ONNXAutoCastConfig`: the exported fp32 ONNX graph becomes mixed fp32/fp16 (or bf16) with ModelOpt AutoCast,
  which keeps numerically sensitive nodes in fp32; the recorded samples feed its reference run.
- `ONNXQuantizationConfig`: post-training quantization of the ONNX graph (int8, fp8, int4) with ModelOpt's
  ONNX PTQ, calibrated on the recorded samples.
- `TorchQuantizationConfig`: ModelOpt's PyTorch quantization (`mtq.quantize` with a named recipe such as
  FP8_DEFAULT_CFG) on a copy of the module, calibrated by a forward loop over the recorded samples, before export.

TensorRT networks are built strongly typed, so the precisions written into the ONNX graph are the precisions
the engine runs in. Applying a config needs `nvidia-modelopt` with its ONNX extras: pip install 'aitune[modelopt]'.

Known limits: calibration sees only the recorded samples (few by default: see `max_num_samples_stored`);
ONNX PTQ calibrates on the samples of the most common shape set; bf16 inputs are not fed to AutoCast's reference
run (numpy has no bf16), which then uses random data; TorchQuantizationConfig deep-copies the module.
"""

from __future__ import annotations

import copy
import importlib
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from aitune.torch import _tree
from aitune.torch._errors import BackendUnavailableError
from aitune.torch._samples import Sample
from aitune.torch.backend._flat import FlatIO
from aitune.torch.backend._optional import require

logger = logging.getLogger(__name__)

_INT8_FP8_METHODS = ("max", "entropy")
_INT4_METHODS = ("awq_clip", "awq_lite", "awq_full", "rtn_dq")
_CFG_NAME = re.compile(r"^[A-Z][A-Z0-9_]*_CFG$")


class _QuantizationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ONNXAutoCastConfig(_QuantizationConfig):
    """Mixed precision of the exported ONNX graph with ModelOpt AutoCast (fp32 kept where fp16 would overflow)."""

    precision: Literal["fp16", "bf16"] = Field(default="fp16", description="The low precision to cast to.")
    keep_io_types: bool = Field(default=True, description="Keep the graph's inputs and outputs in their original "
                                "types (casts inside the graph), so the engine takes and returns what eager does.")
    nodes_to_exclude: list[str] | None = Field(default=None, description="Node name patterns kept in fp32.")
    op_types_to_exclude: list[str] | None = Field(default=None, description="ONNX op types kept in fp32.")
    data_max: float = Field(default=512.0, gt=0, description="Nodes whose outputs exceed this magnitude in the "
                            "reference run stay in fp32.")
    init_max: float = Field(default=65504.0, gt=0, description="Initializers above this magnitude stay in fp32.")
    calibration_samples: int = Field(default=8, ge=0, description="Recorded samples fed to AutoCast's reference "
                                     "run; 0: ModelOpt's random data.")


class ONNXQuantizationConfig(_QuantizationConfig):
    """Post-training quantization of the exported ONNX graph with ModelOpt (`modelopt.onnx.quantization`)."""

    precision: Literal["int8", "fp8", "int4"] = Field(
        default="int8", validation_alias=AliasChoices("precision", "quantize_mode"),
        description="Quantization mode (ModelOpt's quantize_mode).")
    calibration_method: Literal["max", "entropy", "awq_clip", "awq_lite", "awq_full", "rtn_dq"] | None = Field(
        default=None, description="int8/fp8: 'entropy' or 'max'; int4: 'awq_clip', 'awq_lite', 'awq_full' or "
        "'rtn_dq'; None: ModelOpt's default for the mode.")
    high_precision_dtype: Literal["fp32", "fp16", "bf16"] = Field(
        default="fp16", description="Precision of the parts left unquantized (ModelOpt's default is fp16).")
    op_types_to_exclude: list[str] | None = Field(default=None, description="ONNX op types left unquantized.")
    nodes_to_exclude: list[str] | None = Field(default=None, description="Node name patterns left unquantized.")
    calibration_eps: list[str] | None = Field(
        default=None, description="ONNX Runtime providers for calibration, e.g. ['cpu'] or ['cuda:0', 'cpu']; "
        "None: ModelOpt's default.")
    use_model_opt_post_processing: bool = Field(
        default=False, description="Apply ModelOpt's FP4 QDQ post-processing (fp4qdq_to_2dq) after quantizing.")

    @model_validator(mode="after")
    def _method_fits_mode(self) -> ONNXQuantizationConfig:
        method = self.calibration_method
        allowed = _INT4_METHODS if self.precision == "int4" else _INT8_FP8_METHODS
        if method is not None and method not in allowed:
            raise ValueError(f"calibration_method {method!r} does not apply to {self.precision}; use one of "
                             f"{', '.join(allowed)}")
        return self


class TorchQuantizationConfig(_QuantizationConfig):
    """ModelOpt PyTorch quantization (`mtq.quantize`) of a copy of the module, before the ONNX export."""

    quantization_config: str = Field(default="FP8_DEFAULT_CFG", description="Name of a ModelOpt recipe in "
                                     "modelopt.torch.quantization, e.g. FP8_DEFAULT_CFG, INT8_DEFAULT_CFG.")
    device: str = Field(default="cuda", description="Device the copy is calibrated and exported on.")
    calibration_samples: int | None = Field(default=None, ge=1, description="Recorded samples run by the "
                                            "calibration loop; None: all of them.")

    @field_validator("quantization_config")
    @classmethod
    def _recipe_name(cls, value: str) -> str:
        if not _CFG_NAME.match(value):
            raise ValueError(f"{value!r} is not a ModelOpt recipe name (such as 'FP8_DEFAULT_CFG' or "
                             "'INT8_DEFAULT_CFG')")
        return value

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        torch.device(value)  # raises on a malformed name
        return value


QuantizationConfig = ONNXAutoCastConfig | ONNXQuantizationConfig | TorchQuantizationConfig
QUANTIZATION_CONFIGS: dict[str, type[_QuantizationConfig]] = {
    cls.__name__: cls for cls in (ONNXAutoCastConfig, ONNXQuantizationConfig, TorchQuantizationConfig)}


def quantization_from_data(value: Any) -> Any:
    """A recipe from config-file data naming its type ({type = "ONNXAutoCastConfig", precision = "fp16"});
    anything else is returned for pydantic to validate."""
    if isinstance(value, dict) and "type" in value:
        fields = dict(value)
        name = fields.pop("type")
        if name not in QUANTIZATION_CONFIGS:
            raise ValueError(f"unknown quantization config type {name!r}; known: {', '.join(QUANTIZATION_CONFIGS)}")
        return QUANTIZATION_CONFIGS[name](**fields)
    return value


def describe_quantization(config: QuantizationConfig | None) -> dict[str, Any] | None:
    """JSON-able settings with the recipe's type name, for cache keys and the report."""
    if config is None:
        return None
    return {"type": type(config).__name__, **config.model_dump(mode="json")}


def _modelopt(submodule: str) -> Any:
    require("TensorRTBackend quantization", "modelopt", "modelopt")
    try:
        return importlib.import_module(submodule)
    except ImportError as e:
        raise BackendUnavailableError(
            f"{submodule} does not import ({e}); its dependencies are missing: pip install 'aitune[modelopt]'",
            backend="TensorRTBackend") from e


def _graph_inputs(onnx_path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers]


def _uses_external_data(onnx_path: Path) -> bool:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return any(init.data_location == onnx.TensorProto.EXTERNAL for init in graph.initializer)


def _numpy_feeds(io: FlatIO, sample: Sample, names: Sequence[str]) -> dict[str, Any] | None:
    """The sample's inputs that the graph takes, as numpy arrays; None when one has no numpy dtype."""
    flat = dict(zip(io.input_names, io.flatten(sample.args, sample.kwargs)))
    feeds = {}
    for name in names:
        t = flat[name].detach()
        if t.dtype == torch.bfloat16:
            return None
        feeds[name] = t.cpu().contiguous().numpy()
    return feeds


def save_onnx(model: Any, path: Path) -> None:
    """Write an ONNX ModelProto with its weights beside it, so models over protobuf's 2 GB limit save too."""
    import onnx

    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{path.name}.data")


def autocast_onnx(src: Path, dst: Path, config: ONNXAutoCastConfig, io: FlatIO, samples: Sequence[Sample]) -> Path:
    """Write the mixed-precision version of the ONNX model `src` to `dst`."""
    autocast = _modelopt("modelopt.onnx.autocast")
    names = _graph_inputs(src)
    calibration: str | None = None
    feeds = [_numpy_feeds(io, s, names) for s in samples[:config.calibration_samples]]
    if feeds and all(f is not None for f in feeds):
        import numpy as np

        calib_dir = dst.parent / "autocast_inputs"
        calib_dir.mkdir(exist_ok=True)
        for i, feed in enumerate(feeds):
            np.savez(calib_dir / f"sample_{i:04d}.npz", **feed)  # type: ignore[arg-type]
        calibration = str(calib_dir)
    logger.info("ONNX AutoCast to %s (%s)", config.precision,
                f"reference run on {len(feeds)} recorded samples" if calibration else "reference run on random data")
    model = autocast.convert_to_mixed_precision(
        onnx_path=str(src), low_precision_type=config.precision, keep_io_types=config.keep_io_types,
        nodes_to_exclude=config.nodes_to_exclude, op_types_to_exclude=config.op_types_to_exclude,
        data_max=config.data_max, init_max=config.init_max, calibration_data=calibration)
    save_onnx(model, dst)
    return dst


def calibration_arrays(io: FlatIO, samples: Sequence[Sample], names: Sequence[str]
                       ) -> tuple[dict[str, Any], str | None]:
    """The samples of the most common shape set, concatenated along dim 0 per graph input, and ModelOpt's
    `calibration_shapes` spec for one calibration step (None when an input is a scalar)."""
    import numpy as np

    by_shape: dict[tuple[tuple[int, ...], ...], list[dict[str, Any]]] = {}
    for sample in samples:
        feeds = _numpy_feeds(io, sample, names)
        if feeds is None:
            raise ValueError("ONNX quantization cannot calibrate on bfloat16 inputs (numpy has no bfloat16)")
        key = tuple(feeds[n].shape for n in names)
        by_shape.setdefault(key, []).append(feeds)
    if not by_shape:
        raise ValueError("ONNX quantization needs at least one recorded sample to calibrate on")
    shapes, group = max(by_shape.items(), key=lambda kv: len(kv[1]))
    if any(len(shape) == 0 for shape in shapes):
        return {n: group[0][n] for n in names}, None
    data = {n: np.concatenate([feeds[n] for feeds in group], axis=0) for n in names}
    spec = ",".join(f"{n}:{'x'.join(str(d) for d in shape)}" for n, shape in zip(names, shapes))
    return data, spec


def quantize_onnx(src: Path, dst: Path, config: ONNXQuantizationConfig, io: FlatIO,
                  samples: Sequence[Sample]) -> Path:
    """Write the quantized version of the ONNX model `src` to `dst`, calibrated on `samples`."""
    moq = _modelopt("modelopt.onnx.quantization")
    names = _graph_inputs(src)
    data, spec = calibration_arrays(io, samples, names)
    logger.info("ONNX %s quantization (calibration %s) on %d recorded samples", config.precision,
                config.calibration_method or "default", len(samples))
    kwargs: dict[str, Any] = {
        "onnx_path": str(src), "output_path": str(dst), "quantize_mode": config.precision,
        "calibration_method": config.calibration_method, "calibration_data": data, "calibration_shapes": spec,
        "high_precision_dtype": config.high_precision_dtype, "op_types_to_exclude": config.op_types_to_exclude,
        "nodes_to_exclude": config.nodes_to_exclude, "use_external_data_format": _uses_external_data(src)}
    if config.calibration_eps is not None:
        kwargs["calibration_eps"] = list(config.calibration_eps)
    moq.quantize(**kwargs)
    if not dst.is_file():
        raise RuntimeError(f"ModelOpt ONNX quantization wrote no model to {dst}")
    if config.use_model_opt_post_processing:
        import onnx

        qdq = _modelopt("modelopt.onnx.quantization.qdq_utils")
        save_onnx(qdq.fp4qdq_to_2dq(onnx.load(str(dst))), dst)
    return dst


def _to_device(sample: Sample, device: torch.device) -> Sample:
    move = lambda t: t.to(device)  # noqa: E731
    return Sample(_tree.tree_map(move, sample.args), _tree.tree_map(move, sample.kwargs),
                  _tree.tree_map(move, sample.outputs))


def quantize_module(module: torch.nn.Module, samples: Sequence[Sample], config: TorchQuantizationConfig
                    ) -> tuple[torch.nn.Module, list[Sample]]:
    """A copy of `module` quantized with ModelOpt, calibrated on `samples`, and the samples moved to its device.

    The user's module is never changed: `mtq.quantize` replaces layers in place, so it works on a deep copy.
    """
    mtq = _modelopt("modelopt.torch.quantization")
    recipe = getattr(mtq, config.quantization_config, None)
    if recipe is None:
        known = sorted(n for n in dir(mtq) if _CFG_NAME.match(n))
        raise ValueError(f"ModelOpt has no quantization recipe {config.quantization_config!r}; this version has "
                         f"{', '.join(known)}")
    device = torch.device(config.device)
    moved = [_to_device(s, device) for s in samples]
    calibration = moved[:config.calibration_samples] if config.calibration_samples else moved
    model = copy.deepcopy(module).eval().to(device)

    def forward_loop(m: torch.nn.Module) -> None:
        with torch.no_grad():
            for s in calibration:
                # forward itself: the copy is aitune's own, never a module to discover, record or run hooks of.
                m.forward(*s.args, **s.kwargs)

    logger.info("ModelOpt torch quantization %s on %d recorded samples", config.quantization_config,
                len(calibration))
    return mtq.quantize(model, copy.deepcopy(recipe), forward_loop), moved
