"""The run half of the TensorRT backend: a deserialized engine called like the module.

One execution context per engine. Per call: the module's tensors are flattened (`FlatIO`), the first
optimization profile containing their shapes is selected, shapes and addresses are set from the torch tensors
(made contiguous, cast to the engine's input dtypes), outputs are allocated by torch on the engine's device
from the shapes TensorRT infers, and the engine is enqueued on torch's current CUDA stream, so callers need no
extra synchronization and torch's caching allocator may reuse temporaries safely (same stream).

A call whose shapes lie outside every profile runs the module eagerly (logged once at INFO): the engine keeps
only a weak reference to it, and never raises for it.

With CUDA graphs, a graph is captured for the current input shape set, with static input and output buffers;
inputs are copied in, the graph replays, and the outputs are returned as clones, so a caller keeping an earlier
output never sees it overwritten. A new shape set is re-captured, replacing the graph: one graph per context,
because the context's shape-dependent state is shared, and a graph is only valid while the context holds the
shapes it was captured with. A failed capture, or shapes that change more often than graphs replay, turn graphs
off for the engine (logged once at INFO) and calls run normally.

The engine depends on TensorRT only through the objects it is given (engine, context, library module), which
keeps its own logic testable without a GPU. Known limits: outputs with data-dependent shapes (TensorRT reports
-1 dims after the input shapes are set) are not supported; calls from several threads take turns (one context,
one lock).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import shutil
import tempfile
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aitune.torch.backend._base import Engine
from aitune.torch.backend._flat import FlatIO
from aitune.torch.backend._tensorrt_profiles import TensorRTProfile

logger = logging.getLogger(__name__)

PLAN_FILE = "engine.plan"
META_FILE = "engine.json"
META_FORMAT = 1
#: After this many captures, CUDA graphs stay on only while replays outnumber captures by REPLAYS_PER_CAPTURE.
CAPTURES_BEFORE_CHECK = 4
REPLAYS_PER_CAPTURE = 4
#: Distinct shape sets whose profile choice is remembered.
_MAX_REMEMBERED = 1024

#: TensorRT DataType member name -> torch dtype (the same names in TensorRT and TensorRT-RTX).
TRT_DTYPES: dict[str, torch.dtype] = {
    "FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
    "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8,
    "FP8": torch.float8_e4m3fn}


@dataclass
class EngineMeta:
    """What is saved beside the plan (plain JSON): enough to check and bind a loaded engine."""

    library: str
    library_version: str
    input_names: list[str]
    output_names: list[str]
    profiles: list[TensorRTProfile]

    def to_json(self) -> str:
        return json.dumps({"format": META_FORMAT, "library": self.library, "library_version": self.library_version,
                           "input_names": self.input_names, "output_names": self.output_names,
                           "profiles": [p.model_dump(mode="json") for p in self.profiles]}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> EngineMeta:
        data = json.loads(text)
        if data.get("format") != META_FORMAT:
            raise ValueError(f"unsupported TensorRT engine metadata format {data.get('format')!r}")
        return cls(library=data["library"], library_version=data["library_version"],
                   input_names=list(data["input_names"]), output_names=list(data["output_names"]),
                   profiles=[TensorRTProfile.model_validate(p) for p in data["profiles"]])


_LOGGERS: dict[str, Any] = {}
_ERROR_SEVERITIES = {"INTERNAL_ERROR", "ERROR"}


def trt_logger(trt: Any) -> Any:
    """One logger per library and process (TensorRT expects the same one for builders and runtimes), forwarding
    to ours at DEBUG and keeping the latest errors so our exceptions can quote them."""
    existing = _LOGGERS.get(trt.__name__)
    if existing is not None:
        return existing

    class _Forwarder(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: collections.deque[str] = collections.deque(maxlen=10)

        def log(self, severity: Any, msg: str) -> None:
            if getattr(severity, "name", "") in _ERROR_SEVERITIES:
                self.errors.append(msg)
            # TensorRT's own errors reach the user through our exceptions; its log stays at DEBUG.
            logger.debug("[%s] %s", trt.__name__, msg)

    forwarder = _Forwarder()
    _LOGGERS[trt.__name__] = forwarder
    return forwarder


def deserialize(trt: Any, plan: bytes, device: torch.device) -> tuple[Any, Any]:
    """(runtime, engine) from a serialized plan. The runtime is returned because it must outlive the engine."""
    log = trt_logger(trt)
    runtime = trt.Runtime(log)
    if hasattr(runtime, "engine_host_code_allowed"):
        # A version-compatible plan can carry host code (a lean runtime) that TensorRT runs only when this is on:
        # a plan is loaded as data, never as code (it is TensorRT's default; set so that no caller turns it on).
        runtime.engine_host_code_allowed = False
    errors = log.errors
    errors.clear()
    with torch.cuda.device(device):
        engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        detail = "; ".join(errors or []) or "no message from TensorRT"
        raise RuntimeError(f"{trt.__name__} could not deserialize the engine on {device}: {detail}")
    return runtime, engine


def select_profile(profiles: Sequence[TensorRTProfile], names: Sequence[str],
                   shapes: Sequence[Sequence[int]]) -> int | None:
    """Index of the first profile containing `shapes` (one per name in `names`), or None."""
    named = dict(zip(names, shapes))
    for index, profile in enumerate(profiles):
        if profile.contains(named):
            return index
    return None


@dataclass
class _Graph:
    shapes: tuple[tuple[int, ...], ...]
    graph: Any
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]


class TensorRTEngine(Engine):
    """A TensorRT engine serving one input signature of one module."""

    bakes_weights = True

    def __init__(self, engine: Any, io: FlatIO, meta: EngineMeta, device: torch.device, module: torch.nn.Module,
                 *, use_cuda_graphs: bool = False, runtime: Any = None, artifact_dir: Path | None = None,
                 owned_dir: tempfile.TemporaryDirectory[str] | None = None) -> None:
        self._engine = engine
        self._runtime = runtime
        self._io = io
        self.meta = meta
        self._device = device
        self._module = weakref.ref(module)
        self.artifact_dir = artifact_dir
        self._owned_dir = owned_dir
        self._use_graphs = use_cuda_graphs
        names = set(io.input_names)
        missing = [n for n in meta.input_names if n not in names]
        if missing or len(meta.output_names) != len(io.output_names):
            raise ValueError(f"the engine takes {meta.input_names} and returns {len(meta.output_names)} outputs; the "
                             f"module's calls give {io.input_names} and {len(io.output_names)} outputs")
        # Exporters drop inputs the graph does not use; only the engine's inputs are bound.
        self._bound = [io.input_names.index(n) for n in meta.input_names]
        self._input_dtypes = [self._dtype(n) for n in meta.input_names]
        self._output_dtypes = [self._dtype(n) for n in meta.output_names]
        self._context = engine.create_execution_context()
        if self._context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
        self._active_profile = 0
        #: Set by the backend when a quantization step lowered the precision (the outputs' check uses it).
        self.compute_dtype: torch.dtype | None = None
        self._choices: dict[tuple[tuple[int, ...], ...], int | None] = {}
        self._graph: _Graph | None = None
        self.captures = 0
        self.replays = 0
        self._logged_eager = False
        self._multi_gpu = device.type == "cuda" and torch.cuda.device_count() > 1
        # The context's shapes, addresses, active profile and graph are per engine: one call at a time.
        self._lock = threading.Lock()

    def _dtype(self, name: str) -> torch.dtype:
        trt_dtype = self._engine.get_tensor_dtype(name)
        key = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
        if key not in TRT_DTYPES:
            raise TypeError(f"TensorRT tensor {name!r} has dtype {key}, which torch cannot hold")
        return TRT_DTYPES[key]

    # Seams: the only places that need CUDA. Tests of the engine's own logic replace them.
    def _stream_handle(self) -> int:
        return torch.cuda.current_stream(self._device).cuda_stream if self._device.type == "cuda" else 0

    def _new_graph(self) -> Any:
        return torch.cuda.CUDAGraph()

    def _capturing(self, graph: Any) -> contextlib.AbstractContextManager[Any]:
        return torch.cuda.graph(graph)

    def _device_guard(self) -> contextlib.AbstractContextManager[Any]:
        return torch.cuda.device(self._device) if self._multi_gpu else contextlib.nullcontext()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        flat = self._io.flatten(args, kwargs)
        inputs = [flat[i] for i in self._bound]
        shapes = tuple(tuple(t.shape) for t in inputs)
        try:
            index = self._choices[shapes]
        except KeyError:
            index = select_profile(self.meta.profiles, self.meta.input_names, shapes)
            if len(self._choices) >= _MAX_REMEMBERED:
                self._choices.clear()
            self._choices[shapes] = index
        if index is None:
            return self._eager(shapes, args, kwargs)
        with self._lock, self._device_guard():
            outputs = self._replay(index, shapes, inputs) if self._use_graphs else self._run(index, inputs)
        return self._io.unflatten_outputs(outputs)

    def _eager(self, shapes: tuple[tuple[int, ...], ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        module = self._module()
        if not self._logged_eager:
            self._logged_eager = True
            logger.info("TensorRT engine of %s: input shapes %s are outside every optimization profile; such calls "
                        "run eagerly", type(module).__name__, [list(s) for s in shapes])
        if module is None:
            raise RuntimeError("the module of this TensorRT engine was garbage-collected")
        return module.forward(*args, **kwargs)

    def _bind(self, index: int, inputs: Sequence[torch.Tensor], stream: int) -> tuple[list[torch.Tensor],
                                                                                      list[torch.Tensor]]:
        """Select the profile, set input shapes and addresses, allocate and bind outputs.

        Returns (the input tensors actually bound, which must live until the engine has read them; outputs).
        """
        ctx = self._context
        if index != self._active_profile:
            if not ctx.set_optimization_profile_async(index, stream):
                raise RuntimeError(f"TensorRT could not select optimization profile {index}")
            self._active_profile = index
        bound = []
        for name, t, dtype in zip(self.meta.input_names, inputs, self._input_dtypes):
            t = t.detach()
            if t.dtype != dtype:
                t = t.to(dtype)
            t = t.contiguous()
            bound.append(t)
            if not ctx.set_input_shape(name, tuple(t.shape)):
                raise RuntimeError(f"TensorRT rejected shape {list(t.shape)} for input {name!r} (profile {index})")
            ctx.set_tensor_address(name, t.data_ptr())
        outputs = []
        for name, dtype in zip(self.meta.output_names, self._output_dtypes):
            shape = tuple(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"output {name!r} has a data-dependent shape {list(shape)}, which the TensorRT "
                                   "backend does not support")
            out = torch.empty(shape, dtype=dtype, device=self._device)
            ctx.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        return bound, outputs

    def _execute(self, stream: int) -> None:
        if not self._context.execute_async_v3(stream):
            latest = [e for log in _LOGGERS.values() for e in list(log.errors)[-2:]]
            raise RuntimeError("TensorRT execution failed" + (f": {'; '.join(latest)}" if latest else ""))

    def _as_eager_dtypes(self, outputs: Sequence[torch.Tensor], clone: bool) -> list[torch.Tensor]:
        result = []
        for out, dtype in zip(outputs, self._io.output_dtypes):
            result.append(out.to(dtype) if out.dtype != dtype else (out.clone() if clone else out))
        return result

    def _run(self, index: int, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        stream = self._stream_handle()
        bound, outputs = self._bind(index, inputs, stream)
        self._execute(stream)
        del bound  # freed in stream order: a later allocation on this stream runs after the engine read them
        return self._as_eager_dtypes(outputs, clone=False)

    def _replay(self, index: int, shapes: tuple[tuple[int, ...], ...],
                inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        entry = self._graph
        if entry is None or entry.shapes != shapes:
            self._graph = None  # frees the old graph and its buffers before the new capture
            try:
                entry = self._capture(index, shapes, inputs)
            except Exception as e:  # noqa: BLE001 - capture is an optimization; never fail the call for it
                return self._graphs_off(index, inputs, f"CUDA graph capture failed ({type(e).__name__}: {e})")
            self._graph = entry
            self.captures += 1
            if self.captures > CAPTURES_BEFORE_CHECK and self.replays < REPLAYS_PER_CAPTURE * self.captures:
                return self._graphs_off(index, inputs, f"input shapes change too often for CUDA graphs "
                                                       f"({self.captures} captures, {self.replays} replays)")
        else:
            for static, t in zip(entry.inputs, inputs):
                static.copy_(t)
        entry.graph.replay()
        self.replays += 1
        return self._as_eager_dtypes(entry.outputs, clone=True)

    def _graphs_off(self, index: int, inputs: Sequence[torch.Tensor], why: str) -> list[torch.Tensor]:
        self._use_graphs = False
        self._graph = None
        logger.info("TensorRT engine: %s; running without CUDA graphs", why)
        return self._run(index, inputs)

    def _capture(self, index: int, shapes: tuple[tuple[int, ...], ...], inputs: Sequence[torch.Tensor]) -> _Graph:
        static = [torch.empty(t.shape, dtype=dtype, device=self._device).copy_(t)
                  for t, dtype in zip(inputs, self._input_dtypes)]
        stream = self._stream_handle()
        _, outputs = self._bind(index, static, stream)
        # One ordinary run first: TensorRT applies shape changes lazily on the first enqueue, which must not
        # happen inside the capture.
        self._execute(stream)
        graph = self._new_graph()
        with self._capturing(graph):
            self._execute(self._stream_handle())
        logger.debug("captured a CUDA graph for input shapes %s", [list(t.shape) for t in static])
        return _Graph(shapes, graph, static, outputs)

    def save(self, directory: Path) -> None:
        if self.artifact_dir is None:
            raise RuntimeError("this TensorRT engine has no artifact directory to save from")
        shutil.copy2(self.artifact_dir / PLAN_FILE, Path(directory) / PLAN_FILE)
        (Path(directory) / META_FILE).write_text(self.meta.to_json())

    def release(self) -> None:
        self._graph = None
        self._choices.clear()
        self._context = None
        self._engine = None
        self._runtime = None
        if self._owned_dir is not None:
            self._owned_dir.cleanup()
            self._owned_dir = None

