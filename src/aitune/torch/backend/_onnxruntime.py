"""ONNXRuntimeBackend: export to ONNX, run in an ONNX Runtime InferenceSession.

Inputs and outputs go through IO binding by memory pointer on CPU and on CUDA alike: inputs are not copied,
outputs are allocated by ONNX Runtime on the module's device and handed to torch through DLPack without a
copy. The artifact (the ONNX file and its external weights) can be saved and loaded.

Known limits: on CUDA the session runs on ONNX Runtime's own stream, so each call waits for torch's current
stream first; the CUDA and TensorRT execution providers need the `onnxruntime-gpu` package, which no machine of
this project's CI has (the CUDA path has not been executed here).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from aitune.torch._samples import Sample, SignatureRecord
from aitune.torch.backend._base import Backend, BackendConfig, Engine
from aitune.torch.backend._flat import FlatIO
from aitune.torch.backend._onnx import check_external_data, export_onnx
from aitune.torch.backend._optional import missing_reason, require

_MODEL_FILE = "model.onnx"
_SHORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider"}
_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
               "all": "ORT_ENABLE_ALL"}
#: ONNX TensorProto element types, for dtypes numpy has no name for.
_ONNX_ELEMENT_TYPES = {torch.bfloat16: 16}


def _onnxruntime() -> Any:
    return require("ONNXRuntimeBackend", "onnxruntime", "onnxruntime")


class ONNXRuntimeBackendConfig(BackendConfig):
    """Settings of the ONNX export and of the ONNX Runtime session."""

    providers: list[str | tuple[str, dict[str, Any]]] | None = Field(
        default=None, description="Execution providers in priority order, by full name "
        "('CUDAExecutionProvider') or short name ('cpu', 'cuda', 'tensorrt'), optionally as (name, options). "
        "None: CUDA (then CPU) on a CUDA device, CPU on the CPU.")
    use_dynamo: bool = Field(default=True, description="Export with torch.export (dynamo); False: the "
                             "TorchScript-based exporter.")
    opset_version: int | None = Field(default=None, description="ONNX opset; None: the exporter's default.")
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = Field(
        default="all", description="ONNX Runtime graph optimizations.")
    intra_op_num_threads: int | None = Field(default=None, ge=0, description="CPU threads per operator; "
                                             "None: ONNX Runtime's default.")

    @field_validator("providers")
    @classmethod
    def _full_provider_names(cls, value: list[Any] | None) -> list[Any] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("an empty provider list runs nothing; leave providers unset for the device default")
        full: list[Any] = []
        for item in value:
            name, options = (item, None) if isinstance(item, str) else item
            name = _SHORT_PROVIDERS.get(name.lower(), name)
            if not name.endswith("ExecutionProvider"):
                raise ValueError(f"{name!r} is not an execution provider name (e.g. 'CPUExecutionProvider', "
                                 f"'cuda', 'tensorrt')")
            full.append(name if options is None else (name, dict(options)))
        return full


def _provider_name(item: str | tuple[str, dict[str, Any]]) -> str:
    return item if isinstance(item, str) else item[0]


class _OrtEngine(Engine):
    bakes_weights = True

    def __init__(self, session: Any, io: FlatIO, device: torch.device, model_dir: Path,
                 owned_dir: tempfile.TemporaryDirectory[str] | None) -> None:
        self._session = session
        self._io = io
        self._device = device
        self._device_type = "cuda" if device.type == "cuda" else "cpu"
        self._device_id = (device.index or 0) if device.type == "cuda" else 0
        self.model_dir = model_dir
        self._owned_dir = owned_dir
        # Exporters drop inputs the graph does not use; those are not bound.
        graph_inputs = {i.name for i in session.get_inputs()}
        self._bound = [i for i, name in enumerate(io.input_names) if name in graph_inputs]
        import numpy as np

        self._element_types = [_ONNX_ELEMENT_TYPES.get(dt) or np.dtype(str(dt).removeprefix("torch."))
                               for dt in io.input_dtypes]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        flat = self._io.flatten(args, kwargs)
        binding = self._session.io_binding()
        keep = []  # contiguous copies must outlive the run
        for i in self._bound:
            t = flat[i].detach().contiguous()
            keep.append(t)
            binding.bind_input(self._io.input_names[i], self._device_type, self._device_id, self._element_types[i],
                               tuple(t.shape), t.data_ptr())
        for name in self._io.output_names:
            binding.bind_output(name, self._device_type, self._device_id)
        if self._device_type == "cuda":
            torch.cuda.current_stream(self._device).synchronize()
        self._session.run_with_iobinding(binding)
        outputs = [torch.from_dlpack(value) for value in binding.get_outputs()]
        del keep
        return self._io.unflatten_outputs(outputs)

    def save(self, directory: Path) -> None:
        for item in self.model_dir.iterdir():
            if item.is_file():
                shutil.copy2(item, directory / item.name)

    def release(self) -> None:
        self._session = None
        if self._owned_dir is not None:
            self._owned_dir.cleanup()
            self._owned_dir = None


class ONNXRuntimeBackend(Backend):
    """ONNX export, then ONNX Runtime with the chosen execution providers."""

    config_class = ONNXRuntimeBackendConfig
    kind = "aot"
    extra = "onnxruntime"
    bakes_weights = True

    config: ONNXRuntimeBackendConfig

    def exports_program(self) -> bool:
        return bool(self.config.use_dynamo)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return missing_reason("ONNXRuntimeBackend", "onnxruntime", "onnxruntime") or missing_reason(
            "ONNXRuntimeBackend", "onnxruntime", "onnx")

    def providers(self, device: torch.device) -> list[str | tuple[str, dict[str, Any]]]:
        if self.config.providers is not None:
            return list(self.config.providers)
        if device.type == "cuda":
            return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def unsupported_reason(self, device: torch.device) -> str | None:
        reason = super().unsupported_reason(device)
        if reason is not None:
            return reason
        available = set(_onnxruntime().get_available_providers())
        wanted = [_provider_name(p) for p in self.providers(device)]
        missing = [p for p in wanted if p not in available]
        if device.type == "cuda" and not available & {"CUDAExecutionProvider", "TensorrtExecutionProvider"}:
            return ("this onnxruntime has no CUDA or TensorRT execution provider (install onnxruntime-gpu); "
                    f"available: {', '.join(sorted(available))}")
        if missing and self.config.providers is not None:
            return (f"execution provider(s) {', '.join(missing)} not available; available: "
                    f"{', '.join(sorted(available))}")
        return None

    def _session(self, model_path: Path, device: torch.device) -> Any:
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                   _OPT_LEVELS[self.config.graph_optimization_level])
        if self.config.intra_op_num_threads is not None:
            options.intra_op_num_threads = self.config.intra_op_num_threads
        available = set(ort.get_available_providers())
        providers = [p for p in self.providers(device) if _provider_name(p) in available]
        return ort.InferenceSession(str(model_path), sess_options=options, providers=providers)

    def build(self, module: torch.nn.Module, signature: SignatureRecord, samples: Sequence[Sample],
              device: torch.device) -> Engine:
        _onnxruntime()
        owned = tempfile.TemporaryDirectory(prefix="aitune-ort-")
        try:
            model_dir = Path(owned.name)
            io = export_onnx(module, samples, model_dir / _MODEL_FILE, use_dynamo=self.config.use_dynamo,
                             opset_version=self.config.opset_version)
            return _OrtEngine(self._session(model_dir / _MODEL_FILE, device), io, device, model_dir, owned)
        except BaseException:
            owned.cleanup()
            raise

    def load(self, directory: Path, module: torch.nn.Module, signature: SignatureRecord, samples: Sequence[Sample],
             device: torch.device, *, authenticated: bool = False) -> Engine:
        path = Path(directory) / _MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {_MODEL_FILE} in {directory}")
        check_external_data(path)
        return _OrtEngine(self._session(path, device), FlatIO.from_samples(samples, module.forward), device,
                          Path(directory), None)
