"""TorchInductorAotBackend: `torch.export`, then AOTInductor, packaged as one `.pt2` file that can be saved and
loaded in another process.

The module is exported through a small adapter whose forward takes the call's tensors as one flat tuple and
returns the output tensors as one flat tuple: plain input values (ints, bools, None, ...) are part of the input
signature, so they are baked in as constants, and the engine rebuilds the structure eager returned (tuples,
dicts, dataclasses, ModelOutput) around the flat outputs. A dimension is dynamic exactly when its size varied
across the recorded samples, with the recorded range as its bounds (`Dim.AUTO(min, max)`, so torch.export
infers which dynamic sizes are equal, e.g. the batch of input_ids and attention_mask); every other dimension is
static. A dynamic dimension that torch.export makes static or narrows (because the module's code branches on
it) rejects the candidate at build time with the reason.

Known limits:
- torch.export treats sizes 0 and 1 as static: a dynamic dimension's exported range starts at 2 and the traced
  sample is one whose dynamic sizes are all at least 2. Recorded samples of size 1 are still checked on the
  engine by the strategy before it serves a call; a dimension that varied only between 0 and 1, or samples
  where no single one has every dynamic size >= 2, are rejected.
- AOTInductor checks neither sizes nor strides at run time. Sizes: calls outside the recorded range are routed
  to eager by the tuner, never here. Strides: inputs are made contiguous (or channels-last, when the traced
  sample was) before the call, so an in-place change the module makes to a non-contiguous input lands in that
  copy, not in the caller's tensor.
- Inputs are fed in the order of forward's parameters, so keywords passed in another order, or a positional
  parameter passed by keyword, reach the same graph input.
- The package holds its own copy of the weights (`bakes_weights`), outputs never require grad, and a package
  loads only under the torch version that built it. A loaded engine reads the package where it was saved.
- Loading a package is native code that can crash the process (seen on the GPU machine: torch 2.11+cu130's
  `aoti_load_package` segfaults on every package, CPU and CUDA alike, even in a plain script). So the first
  package of each device type in a process is loaded in a child process first; if that child dies, the
  candidate is rejected and the user's process lives on. Later packages are loaded directly.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator

from aitune.torch import _tree
from aitune.torch._errors import TuningError
from aitune.torch._samples import Sample, SignatureRecord
from aitune.torch.backend._base import Backend, BackendConfig, Engine
from aitune.torch.backend._flat import FlatIO, FlatModule

logger = logging.getLogger(__name__)

_PACKAGE_FILE = "model.pt2"
_META_FILE = "aitune_aot.json"
_FORMAT = 1
_MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last,
                   "channels_last_3d": torch.channels_last_3d}
#: Inductor options that would make aoti_compile_and_package write something this backend cannot load.
_FORBIDDEN_OPTIONS = {"aot_inductor.output_path": "the backend chooses the package path",
                      "aot_inductor.package_cpp_only": "the package would hold C++ sources but no loadable library"}
_NAME = "TorchInductorAotBackend"


class ChildLoads:
    """Per device type: whether a package has loaded safely in a child process this run (see `_load_safely`), or
    why the first one killed it (later builds for that device type are then rejected before spending a compile).
    """

    def __init__(self) -> None:
        self.loaded: set[str] = set()
        self.crashed: dict[str, str] = {}

    def crash_reason(self, device_type: str) -> str | None:
        return self.crashed.get(device_type)

    def reset(self) -> None:
        self.loaded.clear()
        self.crashed.clear()


CHILD_LOADS = ChildLoads()


def reset() -> None:
    """Forget which device types loaded or crashed (for tests)."""
    CHILD_LOADS.reset()

_CHILD_LOAD = """
import sys, torch
from torch._inductor import aoti_load_package
aoti_load_package(sys.argv[1], device_index=int(sys.argv[2]))
"""


def _environment() -> str:
    """Libraries and device model: where a package known to load safely may skip the test load."""
    from aitune.torch import _fingerprint

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    return json.dumps([_fingerprint.library_versions(), _fingerprint.device_model(device)], sort_keys=True)


def _load_safely(package: Path, device: torch.device, *, built_here: bool = True) -> Any:
    """`aoti_load_package`, after proving once per process and device type that it does not crash a process.

    A crash of a package built in this process marks the device type (this torch cannot load packages there); one
    of a package that came from a file (`built_here=False`) says nothing about the packages this process builds.
    """
    if device.type not in CHILD_LOADS.loaded:
        env = {k: v for k, v in os.environ.items() if not (k.startswith("AITUNE_") or k == "AUTOWRAPT_BOOTSTRAP")}
        try:
            proc = subprocess.run([sys.executable, "-c", _CHILD_LOAD, str(package), str(_device_index(device))],
                                  env=env, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired as e:
            raise TuningError(f"{_NAME}: loading the AOTInductor package in a test process did not finish in "
                              f"{e.timeout:.0f} s", backend=_NAME) from None
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
            why = (f"{_NAME}: loading the AOTInductor package killed a test process (exit {proc.returncode}: "
                   f"{tail}); not loading it into this one")
            if built_here:
                CHILD_LOADS.crashed[device.type] = why
            raise TuningError(why, backend=_NAME)
        CHILD_LOADS.loaded.add(device.type)
    from torch._inductor import aoti_load_package

    return aoti_load_package(str(package), device_index=_device_index(device))


class TorchInductorAotBackendConfig(BackendConfig):
    """Settings of torch.export and of AOTInductor's `aoti_compile_and_package`."""

    dynamic: bool = Field(
        default=True, description="Export the dimensions whose size varied across the recorded samples as "
        "dynamic, bounded by the recorded range; False: export static shapes only (a signature whose recorded "
        "shapes varied is rejected).")
    inductor_configs: dict[str, Any] | None = Field(
        default=None, description="Inductor config options for AOTInductor (aoti_compile_and_package's "
        "`inductor_configs`, e.g. {'max_autotune': True}).")
    strict_export: bool = Field(
        default=False, description="torch.export's strict mode (trace with TorchDynamo); False: non-strict "
        "tracing, which accepts more Python.")

    @field_validator("inductor_configs")
    @classmethod
    def _loadable_package(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        for key in value or {}:
            if key in _FORBIDDEN_OPTIONS:
                raise ValueError(f"inductor_configs may not set {key!r}: {_FORBIDDEN_OPTIONS[key]}")
        return value


def _memory_format_name(t: torch.Tensor) -> str:
    """The layout the engine feeds this input in: the traced sample's when it is a standard one."""
    if t.is_contiguous():
        return "contiguous"
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return "channels_last_3d"
    return "contiguous"


class _AotEngine(Engine):
    bakes_weights = True

    def __init__(self, model: Any, layout: FlatIO, meta: dict[str, Any], package: Path,
                 owned_dir: tempfile.TemporaryDirectory[str] | None) -> None:
        self._model = model
        # The loader's own run skips AOTICompiledModel.__call__'s per-call pytree spec parsing (~10 us).
        loader = getattr(model, "loader", None)
        self._run = loader.run if loader is not None and hasattr(loader, "run") else (lambda flat: model(*flat))
        self._layout = layout
        self._formats = [_MEMORY_FORMATS[i["memory_format"]] for i in meta["inputs"]]
        self._num_inputs = len(self._formats)
        self._single_output = isinstance(layout.outputs_template, torch.Tensor)
        self.meta = meta
        self.package = package
        self._owned_dir = owned_dir  # TemporaryDirectory removes itself when collected, too

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        flat = self._layout.flatten(args, kwargs)
        if len(flat) != self._num_inputs:
            raise TypeError(f"this engine takes {self._num_inputs} tensor(s), the call passed {len(flat)}")
        for i, fmt in enumerate(self._formats):
            t = flat[i]
            if not t.is_contiguous(memory_format=fmt):
                flat[i] = t.contiguous(memory_format=fmt)
        out = self._run(flat)
        if self._single_output:
            return out[0]
        return self._layout.unflatten_outputs(out)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        shutil.copyfile(self.package, directory / _PACKAGE_FILE)
        meta = dict(self.meta)
        if meta.get("device_type") in CHILD_LOADS.loaded:
            # This environment loaded a package of this device type without crashing: a later process with the
            # same libraries and device (a cache hit) can skip the test load in a child process.
            meta["loaded_safely_in"] = _environment()
        (directory / _META_FILE).write_text(json.dumps(meta, indent=1))

    def release(self) -> None:
        self._model = None
        self._run = _released
        if self._owned_dir is not None:
            self._owned_dir.cleanup()
            self._owned_dir = None


def _released(flat: list[torch.Tensor]) -> list[torch.Tensor]:
    raise RuntimeError("this engine was released")


def _device_index(device: torch.device) -> int:
    return device.index if device.type == "cuda" and device.index is not None else -1


class TorchInductorAotBackend(Backend):
    """torch.export, then AOTInductor (`aoti_compile_and_package`); the `.pt2` package can be saved."""

    config_class = TorchInductorAotBackendConfig
    kind = "aot"
    #: The package holds a compiled shared library that loading runs.
    artifact_runs_code = True
    device_types = ("cpu", "cuda")

    config: TorchInductorAotBackendConfig

    def exports_program(self) -> bool:
        return True

    @classmethod
    def unavailable_reason(cls) -> str | None:
        # AOTInductor compiles its C++ wrapper (and CPU kernels) with the system's compiler, on CUDA too.
        if os.name == "nt" or os.environ.get("CXX") or any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            return None
        return f"{cls.__name__} compiles C++ with AOTInductor and found no C++ compiler: install g++ or set CXX"

    def build(self, module: torch.nn.Module, signature: SignatureRecord, samples: Sequence[Sample],
              device: torch.device) -> Engine:
        if not samples:
            raise TuningError(f"{self.name} needs at least one recorded sample", backend=self.name)
        if device.type in CHILD_LOADS.crashed:
            raise TuningError(f"{CHILD_LOADS.crashed[device.type]} (an earlier package of this process)", backend=_NAME)
        layout = FlatIO.from_samples(samples, module.forward)
        _check_plain_values(layout)
        flats = [layout.flatten(s.args, s.kwargs) for s in samples]
        lows = [lo for lo, _, _ in layout.shape_ranges]
        highs = [hi for _, _, hi in layout.shape_ranges]
        dynamic = layout.dynamic_dims
        self._check_dynamic(layout, dynamic, lows, highs)
        example = next((flat for flat in flats if all(flat[i].shape[d] >= 2 for i, dims in enumerate(dynamic)
                                                       for d in dims)), None)
        if example is None:
            raise TuningError(f"{self.name}: no recorded sample has every varying size at least 2, and torch.export "
                              f"treats sizes 0 and 1 as static: {_describe_dims(layout, dynamic, lows, highs)}",
                              backend=self.name)
        formats = [_memory_format_name(t) for t in example]
        example = [t.contiguous(memory_format=_MEMORY_FORMATS[f]) for t, f in zip(example, formats)]
        dynamic_shapes = None
        if any(dynamic):
            auto = torch.export.Dim.AUTO
            # One entry, forward's *flat, holding a tuple (not a list) with one spec per flat input.
            dynamic_shapes = (tuple({d: auto(min=max(lows[i][d], 2), max=highs[i][d]) for d in dims} or None
                                    for i, dims in enumerate(dynamic)),)

        start = time.perf_counter()
        try:
            program = torch.export.export(FlatModule(module, layout), tuple(example), dynamic_shapes=dynamic_shapes,
                                          strict=self.config.strict_export)
        except Exception as e:  # any export failure rejects this candidate, with torch's reason
            strict = self.config.strict_export
            raise TuningError(f"{self.name}: torch.export (strict_export={strict}) failed for "
                              f"{type(module).__name__}: {type(e).__name__}: {e}", backend=self.name) from e
        self._check_exported(program, layout, dynamic, lows, highs)
        export_s = time.perf_counter() - start

        from torch._inductor import aoti_compile_and_package

        owned = tempfile.TemporaryDirectory(prefix="aitune-aot-")
        try:
            package = Path(owned.name) / _PACKAGE_FILE
            try:
                with warnings.catch_warnings():
                    # torch's deep copy of the graph warns about torch's own deprecated pytree API: not actionable.
                    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)",
                                            category=FutureWarning)
                    # aoti_compile_and_package writes into the dict it is given: pass a copy.
                    aoti_compile_and_package(program, package_path=str(package),
                                             inductor_configs=dict(self.config.inductor_configs or {}))
            except Exception as e:  # any compile failure rejects this candidate, with Inductor's reason
                raise TuningError(f"{self.name}: AOTInductor failed to compile {type(module).__name__}: "
                                  f"{type(e).__name__}: {e}", backend=self.name) from e
            del program
            model = _load_safely(package, device)
            logger.debug("%s: exported %s in %.1f s, compiled and loaded in %.1f s", self.name,
                         type(module).__name__, export_s, time.perf_counter() - start - export_s)
            meta = {"format": _FORMAT, "backend": self.name, "torch_version": torch.__version__,
                    "device_type": device.type, "settings": self.engine_settings(),
                    "inputs": [{"name": path, "dtype": str(t.dtype).removeprefix("torch."), "memory_format": fmt,
                                "min_shape": lo, "max_shape": hi, "dynamic_dims": dims}
                               for path, t, fmt, lo, hi, dims in zip(layout.input_names, example, formats, lows,
                                                                      highs, dynamic)],
                    "num_outputs": len(layout.output_names)}
            return _AotEngine(model, layout, meta, package, owned)
        except BaseException:
            owned.cleanup()
            raise

    def load(self, directory: Path, module: torch.nn.Module, signature: SignatureRecord, samples: Sequence[Sample],
             device: torch.device, *, authenticated: bool = False) -> Engine:
        directory = Path(directory)
        package, meta_path = directory / _PACKAGE_FILE, directory / _META_FILE
        if not package.is_file() or not meta_path.is_file():
            raise FileNotFoundError(f"{self.name}: {directory} holds no saved engine ({_PACKAGE_FILE} and "
                                    f"{_META_FILE} are expected)")
        if not samples:
            raise TuningError(f"{self.name} needs a recorded sample to load an engine", backend=self.name)
        meta = json.loads(meta_path.read_text())
        problem = _load_problem(meta, device)
        layout = FlatIO.from_samples(samples, module.forward)
        saved = [(i["name"], i["dtype"]) for i in meta.get("inputs", [])]
        current = [(name, str(dtype).removeprefix("torch."))
                   for name, dtype in zip(layout.input_names, layout.input_dtypes)]
        if problem is None and saved != current:
            problem = f"it takes inputs {saved}, the module is called with {current}"
        if problem is None and meta.get("num_outputs") != len(layout.output_names):
            problem = (f"it returns {meta.get('num_outputs')} tensor(s), the module returns "
                       f"{len(layout.output_names)}")
        if problem is not None:
            raise TuningError(f"{self.name}: the engine saved in {directory} does not fit: {problem}; delete it "
                              f"to rebuild", backend=self.name)
        if authenticated and meta.get("loaded_safely_in") == _environment():
            # Our own signed note (a cache entry) that a package loaded safely here; a checkpoint's is ignored.
            CHILD_LOADS.loaded.add(device.type)
        return _AotEngine(_load_safely(package, device, built_here=False), layout, meta, package, None)

    def _check_dynamic(self, layout: FlatIO, dynamic: list[list[int]], lows: list[list[int]],
                       highs: list[list[int]]) -> None:
        if any(dynamic) and not self.config.dynamic:
            raise TuningError(f"{self.name}(dynamic=False) exports static shapes, but these sizes varied across "
                              f"the recorded samples: {_describe_dims(layout, dynamic, lows, highs)}",
                              backend=self.name)
        tiny = [[d for d in dims if highs[i][d] < 2] for i, dims in enumerate(dynamic)]
        if any(tiny):
            raise TuningError(f"{self.name}: these sizes varied only between 0 and 1, which torch.export always "
                              f"treats as static: {_describe_dims(layout, tiny, lows, highs)}", backend=self.name)

    def _check_exported(self, program: Any, layout: FlatIO, dynamic: list[list[int]], lows: list[list[int]],
                        highs: list[list[int]]) -> None:
        """Reject a program in which a recorded-dynamic dimension came out static or with a narrower range: its
        engine would silently compute the traced branch for other sizes (AOTInductor does not check sizes)."""
        from torch.fx.experimental.symbolic_shapes import is_concrete_int

        placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
        user_inputs = list(program.graph_signature.user_inputs)
        problems: list[str] = []
        for i, (name, dims) in enumerate(zip(user_inputs, dynamic)):
            value = placeholders[name].meta.get("val") if name in placeholders else None
            if not isinstance(value, torch.Tensor):
                continue
            for d in dims:
                size = value.shape[d]
                where = f"{layout.input_names[i]} dim {d} (recorded {lows[i][d]}..{highs[i][d]})"
                if is_concrete_int(size) or not isinstance(size, torch.SymInt):
                    problems.append(f"{where} became static at size {int(size)}")
                    continue
                expr = size.node.expr
                bounds = program.range_constraints.get(expr)
                if bounds is None:
                    continue  # a derived size (e.g. 2 * s0): its symbol's range is checked where it is an input
                if bool(bounds.lower > max(lows[i][d], 2)) or bool(bounds.upper < highs[i][d]):
                    problems.append(f"{where} was narrowed to {bounds.lower}..{bounds.upper}")
        if problems:
            raise TuningError(f"{self.name}: torch.export could not keep every recorded size: "
                              f"{'; '.join(problems)}. The module's code fixes or branches on these sizes (e.g. "
                              f"`if x.shape[0] > 4:`), so one exported program cannot serve the recorded range",
                              backend=self.name)


def _check_plain_values(layout: FlatIO) -> None:
    """Non-tensor inputs are baked in as constants: only values that are part of the signature key may be."""
    for path, leaf in _tree.leaf_paths(dict(zip(layout.keys, layout.inputs_template))):
        if not isinstance(leaf, torch.Tensor) and _tree.spec(leaf)[0] != "V":
            raise TuningError(f"{_NAME}: input {path} is a {type(leaf).__qualname__}; only tensors and plain "
                              f"values (numbers, strings, None, dtypes, ...) inside tuples, lists and dicts can "
                              f"be exported", backend=_NAME)


def _describe_dims(layout: FlatIO, dims: list[list[int]], lows: list[list[int]], highs: list[list[int]]) -> str:
    return ", ".join(f"{layout.input_names[i]} dim {d} ({lows[i][d]}..{highs[i][d]})"
                     for i, ds in enumerate(dims) for d in ds)


def _load_problem(meta: dict[str, Any], device: torch.device) -> str | None:
    if meta.get("format") != _FORMAT or meta.get("backend") != _NAME:
        return f"it is not a {_NAME} engine of format {_FORMAT}"
    if meta.get("torch_version") != torch.__version__:
        return f"it was built with torch {meta.get('torch_version')}, this process runs torch {torch.__version__}"
    if meta.get("device_type") != device.type:
        return f"it was built for {meta.get('device_type')}, the module is on {device.type}"
    return None

