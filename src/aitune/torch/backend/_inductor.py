"""TorchInductorJitBackend: `torch.compile` with the Inductor compiler.

The compiled function reads the module's live parameters, so in-place weight updates keep flowing through it;
torch.compile's own guards recompile on parameter replacement. With `freezing=True` (Inductor's weight freezing:
parameters become constants of the graph, folded and laid out for the kernels, e.g. convolution weights in
channels-last) the engine holds its own copy of the weights instead, and is dropped like an ONNX Runtime engine
when they change; freezing applies to calls without grad, the others compile as usual. Every recorded shape is
run during the build, so automatic-dynamic recompiles happen while tuning rather than on a user's call.
Known limit: with mode="reduce-overhead" (CUDA graphs) outputs live in graph-owned memory; the engine returns
copies so a caller keeping an earlier output never sees it overwritten.

Whole-graph engines. For a signature of one size, recorded without grad and shown pure (`_signature._purity`),
the forward is compiled whole (`fullgraph=True`) with `torch.compile(...).aot_compile`, once per signature and
compile setting: the default candidate serves that function, and the candidate that differs only in CUDA graphs
(`reduce-overhead`) a CUDA graph that aitune captures itself around the same function (`_graphs.CapturedGraph`),
so it costs no second compile. A forward that does not compile whole (a graph break) gets the usual
torch.compile. Such a function is also what the persistent cache saves (`save_compiled_function`: Dynamo's
bytecode and guards, the AOTAutograd and Inductor artifacts) and a later process loads
(`torch.compiler.load_compiled_function`) without tracing or compiling anything. The module is an argument, so
the function reads the live weights. CUDA graphs are not part of the file, so a CUDA-graph engine is captured
again where it is loaded. The file is a pickle holding code: it is loaded only from a signed entry of the user's
own cache (`authenticated`). Guards Dynamo cannot serialize are left out (`_serializable_guards`); a call the
function's remaining guards refuse (other strides, say) compiles the forward afresh, as a torch.compile engine
recompiles.
"""

from __future__ import annotations

import builtins
import contextlib
import itertools
import json
import logging
import tempfile
import types
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator

from aitune.torch import _tree
from aitune.torch._samples import Sample, SignatureRecord
from aitune.torch.backend._base import Backend, BackendConfig, Engine

logger = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
_entry_ids = itertools.count()
#: The saved function and what it was saved for, in a saved engine's directory.
ARTIFACT_FILE = "compiled_function.bin"
INFO_FILE = "compiled_function.json"
_ARTIFACT_FORMAT = 1


def entry_point(module: torch.nn.Module) -> Callable[..., Any]:
    """A function `entry(module, *args, **kwargs)` calling `module.forward`, whose code object belongs to this
    engine alone.

    Dynamo keys its compiled-code cache and its recompile limit on the code object of the frame it compiles.
    Compiling a method of nn.Module directly would share one code object across every module aitune tunes, and
    the ninth module would silently run uncompiled. The module is an argument rather than a closure so the engine
    never keeps it alive. The module's own hooks are not part of the engine: aitune runs them around it
    (`_signature._hooks`), once per user call.
    """

    def entry(mod: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        return mod.forward(*args, **kwargs)

    code = entry.__code__.replace(co_name=f"aitune_{type(module).__name__}_{next(_entry_ids)}")
    return types.FunctionType(code, entry_scope(), code.co_name, None, None)


def entry_scope() -> dict[str, Any]:
    """The globals of an entry function: the builtins by name (code Dynamo writes for a frame may read `type` or
    `isinstance` as globals; torch 2.11 checks a saved function's globals for them), nothing of aitune's own, and
    one dict per entry, so what Dynamo installs there for one engine is not seen by another."""
    scope: dict[str, Any] = dict(vars(builtins))
    scope.update(__name__=__name__, __builtins__=builtins)
    return scope


class TorchInductorJitBackendConfig(BackendConfig):
    """Settings of `torch.compile(backend="inductor")`; see torch.compile's documentation."""

    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None = Field(
        default=None, description="torch.compile mode; None is torch's default.")
    fullgraph: bool = Field(default=False, description="Fail the candidate on any graph break.")
    dynamic: bool | None = Field(
        default=None, description="True: dynamic shapes from the start; False: static; None: automatic.")
    options: dict[str, Any] | None = Field(
        default=None, description="Inductor config options (torch.compile's `options`); exclusive with mode.")
    freezing: bool = Field(
        default=False, description="Inductor weight freezing (inference): the weights become constants of the "
                                   "graph; the engine is dropped when they change.")
    autocast_enabled: bool = Field(default=False, description="Run the engine under torch.autocast.")
    autocast_dtype: Literal["float16", "bfloat16"] | None = Field(
        default=None, description="Autocast dtype (default: float16 on CUDA, bfloat16 on CPU); a name or a "
                                  "torch.dtype (torch.float16).")

    _autocast_dtype_name = field_validator("autocast_dtype", mode="before")(classmethod(
        lambda cls, value: autocast_dtype_name(value)))

    @model_validator(mode="after")
    def _mode_xor_options(self) -> TorchInductorJitBackendConfig:
        if self.mode is not None and self.options:
            raise ValueError("torch.compile accepts either `mode` or `options`, not both")
        return self


def autocast_dtype_name(value: Any) -> Any:
    """`torch.float16` (or "torch.float16", "half") as "float16"; anything else as it came, for the field to
    judge."""
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, str):
        found = getattr(torch, value.strip().removeprefix("torch."), None)
        if isinstance(found, torch.dtype):
            return str(found).removeprefix("torch.")
    return value


def autocast_for(enabled: bool, dtype_name: str | None, device: torch.device
                 ) -> tuple[torch.autocast | None, torch.dtype | None]:
    """(the autocast context, the dtype it computes in) for an engine's settings; (None, None) when disabled.
    The default dtype is float16 on CUDA, bfloat16 on the CPU."""
    if not enabled:
        return None, None
    dtype = _DTYPES[dtype_name] if dtype_name else (torch.float16 if device.type == "cuda" else torch.bfloat16)
    return torch.autocast(device_type=device.type, dtype=dtype), dtype


def compile_on_samples(engine: Engine, samples: Sequence[Sample]) -> Engine:
    """Run `engine` on (copies of) every recorded sample now, so torch.compile's compiles (one per distinct shape)
    happen while tuning, not on a user's call. Copies: a call that changes its inputs must not change the samples
    it will be checked on."""
    for sample in samples:
        args, kwargs = _tree.clone((sample.args, sample.kwargs))
        engine(*args, **kwargs)
    return engine


def _saving_kwargs(cfg: TorchInductorJitBackendConfig) -> tuple[dict[str, Any], bool] | None:
    """torch.compile's arguments for the saved function (no CUDA graphs: aitune captures those itself), and
    whether the engine used CUDA graphs; None for settings a saved function cannot carry."""
    if cfg.freezing or cfg.dynamic:
        return None
    kwargs: dict[str, Any] = {"backend": "inductor", "fullgraph": True, "dynamic": False}
    graphs = cfg.mode in ("reduce-overhead", "max-autotune")
    if cfg.mode == "max-autotune":
        kwargs["mode"] = "max-autotune-no-cudagraphs"
    elif cfg.mode == "max-autotune-no-cudagraphs":
        kwargs["mode"] = cfg.mode
    if cfg.options:
        options = dict(cfg.options)
        graphs = bool(options.pop("triton.cudagraphs", False))
        if options:
            kwargs["options"] = options
    return kwargs, graphs


def _one_size(samples: Sequence[Sample]) -> list[list[int]] | None:
    """The tensor sizes every sample shares, or None when they differ."""
    sizes = [[list(t.shape) for t in _tree.tensors((s.args, s.kwargs))] for s in samples]
    return sizes[0] if sizes and all(x == sizes[0] for x in sizes) else None


def _saveable(signature: SignatureRecord, samples: Sequence[Sample]) -> list[list[int]] | None:
    """The sizes of a signature whose forward may be compiled whole and saved: shown pure, one size, no grad,
    inputs left as they were."""
    if not samples or not signature.shown_pure or bool(signature.key[0]) or \
            any(s.inputs_after is not None for s in samples):
        return None
    return _one_size(samples)


def _writer(compiled: Any, graphs: bool, shapes: list[list[int]]) -> Callable[[Path], None]:
    """Serialize `compiled` now (an error surfaces here, not halfway through writing an entry) and return what
    writes it and its description into an engine directory."""
    with tempfile.TemporaryDirectory(prefix="aitune-aot-") as tmp:
        compiled.save_compiled_function(str(Path(tmp) / ARTIFACT_FILE))
        data = (Path(tmp) / ARTIFACT_FILE).read_bytes()
    info = {"format": _ARTIFACT_FORMAT, "graphs": graphs, "shapes": shapes, "torch": torch.__version__}

    def write(directory: Path) -> None:
        (directory / ARTIFACT_FILE).write_bytes(data)
        (directory / INFO_FILE).write_text(json.dumps(info, sort_keys=True))

    return write


def aot_compile(module: torch.nn.Module, compile_kwargs: dict[str, Any], example: Sample,
                autocast: torch.autocast | None) -> Any:
    """`torch.compile(entry, **compile_kwargs).aot_compile(...)` of the module's forward on `example` (traced
    on fake tensors: nothing runs). torch 2.11 attaches `aot_compile` only under `enable_aot_compile`."""
    import torch._dynamo.config as dynamo_config

    args, kwargs = _tree.clone((example.args, example.kwargs))
    compile_kwargs = dict(compile_kwargs)
    mode = compile_kwargs.pop("mode", None)
    options = {**(torch._inductor.list_mode_options(mode) if mode else {}), **compile_kwargs.pop("options", {})}
    options["guard_filter_fn"] = _serializable_guards
    patch = dynamo_config.patch(enable_aot_compile=True) if hasattr(dynamo_config, "enable_aot_compile") \
        else contextlib.nullcontext()
    with patch, autocast if autocast is not None else contextlib.nullcontext():
        compiled: Any = torch.compile(entry_point(module), options=options, **compile_kwargs)
        return compiled.aot_compile(((module, *args), kwargs))


def _serializable_guards(entries: Sequence[Any]) -> list[bool]:
    """The guards a saved function can carry: none on globals, and none of the kinds Dynamo cannot serialize
    (object identity, closures, weak references, dict versions), whether as the guard itself or as one it derives
    from (an enum member compared by identity). What they would have caught, aitune checks itself: the
    signature's key (grad, autocast and other global modes, dtypes, devices), the call's purity, the module-side
    values it watches, and this engine's own guard check on the arguments."""
    from torch._dynamo.guards import CheckFunctionManager

    unsupported = set(CheckFunctionManager.UNSUPPORTED_SERIALIZATION_GUARD_TYPES)
    return [not (e.is_global or e.guard_type in unsupported
                 or unsupported.intersection(getattr(e, "derived_guard_types", None) or ())) for e in entries]


class LoadedCompiledEngine(Engine):
    """A saved torch.compile function, loaded: `fn(module, *args, **kwargs)`. A call its guards refuse is
    served by a fresh torch.compile of the forward from then on (compiled at that call)."""

    runs_no_python = True
    #: Its call is static (one size, pure): a CUDA graph may be captured around it (`_graphs`).
    static_call = True

    def __init__(self, module: torch.nn.Module, fn: Any, *, recompile: dict[str, Any],
                 autocast: torch.autocast | None, compute_dtype: torch.dtype | None) -> None:
        self._module = weakref.ref(module)
        self._fn = fn
        self._recompile = recompile
        self._autocast = autocast
        self.compute_dtype = compute_dtype
        self._fallback: Any = None
        #: The sizes it was compiled for, when it can be saved (compiled in this process).
        self.shapes: list[list[int]] | None = None

    def artifact(self, graphs: bool = False) -> Callable[[Path], None]:
        """The writer of this function's files for the cache (serialized now); `graphs`: the engine serving it
        replays a CUDA graph around it, to be captured again where it is loaded."""
        if self.shapes is None:
            raise NotImplementedError("a function loaded from the cache is saved already")
        return _writer(self._fn, graphs, self.shapes)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module = self._module()
        if module is None:
            raise RuntimeError("the module of this engine was garbage-collected")
        with self._autocast if self._autocast is not None else contextlib.nullcontext():
            if self._fallback is None:
                if self._fn.guard_check(module, *args, **kwargs):  # checked once: the call itself does not
                    return self._fn(module, *args, **kwargs)
                logger.info("%s: a call the saved torch.compile function does not cover (its guards refuse it); "
                            "compiling the forward again", type(module).__name__)
                self._fallback = torch.compile(entry_point(module), **self._recompile)
            return self._fallback(module, *args, **kwargs)


class CompiledEngine(Engine):
    def __init__(self, module: torch.nn.Module, compiled: Any, *, copy_outputs: bool,
                 autocast: torch.autocast | None, compute_dtype: torch.dtype | None,
                 bakes_weights: bool = False) -> None:
        self._module = weakref.ref(module)
        self.bakes_weights = bakes_weights
        self._compiled = compiled
        self._copy_outputs = copy_outputs
        self._autocast = autocast
        self.compute_dtype = compute_dtype

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module = self._module()
        if module is None:
            raise RuntimeError("the module of this engine was garbage-collected")
        with self._autocast if self._autocast is not None else contextlib.nullcontext():
            out = self._compiled(module, *args, **kwargs)
        if self._copy_outputs:
            # CUDA-graph outputs live in memory the next replay overwrites; the container itself is new.
            out = _tree.clone_outputs(out)
        return out


class TorchInductorJitBackend(Backend):
    """torch.compile with TorchInductor."""

    config_class = TorchInductorJitBackendConfig
    kind = "jit"
    supports_autograd = True
    #: A saved engine is a pickle of Dynamo's bytecode and compiled kernels (see the module docstring).
    artifact_runs_code = True

    config: TorchInductorJitBackendConfig

    def __init__(self, config: BackendConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.bakes_weights = self.config.freezing

    def uses_cuda_graphs(self, device: torch.device) -> bool:
        cfg = self.config
        return device.type == "cuda" and (
            cfg.mode in ("reduce-overhead", "max-autotune") or bool((cfg.options or {}).get("triton.cudagraphs")))

    def keeps_aliases(self, device: torch.device) -> bool:
        # AOTAutograd hands back outputs that alias graph inputs (parameters, buffers, arguments) as those inputs
        # or views of them; CUDA-graph engines return copies, and a frozen graph may return a folded constant.
        return not self.uses_cuda_graphs(device) and not self.config.freezing

    def serves_new_sizes(self, device: torch.device) -> bool:
        # Dynamo compiles a dimension symbolically once it has seen it vary (every sample runs in the build); with
        # CUDA graphs each new size would record (and keep) one more graph.
        return self.config.dynamic is not False and not self.uses_cuda_graphs(device)

    def build(self, module: torch.nn.Module, signature: SignatureRecord, samples: Sequence[Sample],
              device: torch.device) -> Engine:
        whole = self._build_whole(module, signature, samples, device)
        return whole if whole is not None else self._build_compiled(module, signature, samples, device)

    def _build_whole(self, module: torch.nn.Module, signature: SignatureRecord, samples: Sequence[Sample],
                     device: torch.device) -> Engine | None:
        """For a call shown pure at one size without grad: the forward compiled whole with `aot_compile` (one
        compile shared with the candidate that differs only in CUDA graphs, and saveable as it is), with a CUDA
        graph that aitune captures itself where this candidate uses CUDA graphs. None where that does not apply
        or the whole-graph compile fails (a graph break): torch.compile as usual then."""
        cfg = self.config
        how, shapes = _saving_kwargs(cfg), _saveable(signature, samples)
        if how is None or shapes is None or (how[1] and device.type != "cuda"):
            return None
        compile_kwargs, graphs = how
        autocast, compute_dtype = autocast_for(cfg.autocast_enabled, cfg.autocast_dtype, device)
        key = json.dumps([compile_kwargs, cfg.autocast_enabled, cfg.autocast_dtype], sort_keys=True, default=str)
        found = signature.compiled.get(key)
        if found is None:
            try:
                found = aot_compile(module, compile_kwargs, samples[0], autocast)
            except Exception as e:  # a forward that does not compile whole: the usual torch.compile
                found = e
                logger.debug("%s: no whole-graph compile (%s: %s)", type(module).__name__, type(e).__name__, e)
            signature.compiled[key] = found
        if isinstance(found, Exception):
            return None
        fn = found
        fn.disable_guard_check()  # checked by the engine, once per call
        loaded = LoadedCompiledEngine(module, fn, recompile={**compile_kwargs, "fullgraph": cfg.fullgraph},
                                      autocast=autocast, compute_dtype=compute_dtype)
        loaded.shapes = shapes
        if not graphs:
            return loaded
        from aitune.torch._fingerprint import live_weights
        from aitune.torch.backend._graphs import CapturedGraph

        example = samples[0]
        return CapturedGraph(loaded, example.args, example.kwargs, device, keep=list(live_weights(module)),
                             compute_dtype=compute_dtype, runs_no_python=True)

    def _build_compiled(self, module: torch.nn.Module, signature: SignatureRecord, samples: Sequence[Sample],
                        device: torch.device) -> Engine:
        cfg = self.config
        kwargs: dict[str, Any] = {"backend": "inductor", "fullgraph": cfg.fullgraph, "dynamic": cfg.dynamic}
        if cfg.mode is not None:
            kwargs["mode"] = cfg.mode
        if cfg.options:
            kwargs["options"] = dict(cfg.options)
        # Compile the module's forward: its own hooks run around the engine, and a frame that falls back to Python
        # never re-enters the patched __call__ of this module.
        compiled = torch.compile(entry_point(module), **kwargs)
        autocast, compute_dtype = autocast_for(cfg.autocast_enabled, cfg.autocast_dtype, device)
        engine = CompiledEngine(module, compiled, copy_outputs=self.uses_cuda_graphs(device), autocast=autocast,
                                 compute_dtype=compute_dtype, bakes_weights=cfg.freezing)
        if not cfg.freezing:
            return compile_on_samples(engine, samples)
        # Freezing set in Inductor's config while the samples compile, not through `options`: on the H200 with
        # torch 2.11, `options={"freezing": True, "triton.cudagraphs": True}` gave graphs 2.3x slower than
        # reduce-overhead alone (BERT-base bs1: 2.82 against 1.25 ms), the config set around mode="reduce-overhead"
        # 1.5x faster (0.84 ms). A later recompile (a new size) compiles unfrozen, which is only conservative.
        with torch._inductor.config.patch(freezing=True):
            return compile_on_samples(engine, samples)

    def load(self, directory: Path, module: torch.nn.Module, signature: SignatureRecord, samples: Sequence[Sample],
             device: torch.device, *, authenticated: bool = False) -> Engine:
        """The saved function of `directory` for `module`, its CUDA graph captured here when the engine had one.
        Only from a signed cache entry: the file holds code."""
        if not authenticated:
            raise PermissionError("a saved torch.compile function holds code; aitune loads it only from a signed "
                                  "entry of its own cache")
        info = json.loads((directory / INFO_FILE).read_text())
        if info.get("format") != _ARTIFACT_FORMAT:
            raise ValueError(f"saved function format {info.get('format')!r}, expected {_ARTIFACT_FORMAT}")
        shapes = _saveable(signature, samples)
        if shapes != info.get("shapes"):
            raise ValueError(f"saved for sizes {info.get('shapes')}, called with {shapes}")
        with (directory / ARTIFACT_FILE).open("rb") as f:
            fn: Any = torch.compiler.load_compiled_function(f, f_globals=entry_scope())
        fn.disable_guard_check()  # checked by the engine, once per call
        cfg = self.config
        autocast, compute_dtype = autocast_for(cfg.autocast_enabled, cfg.autocast_dtype, device)
        recompile, _ = _saving_kwargs(cfg) or ({"backend": "inductor"}, False)
        loaded = LoadedCompiledEngine(module, fn, recompile={**recompile, "fullgraph": cfg.fullgraph},
                                      autocast=autocast, compute_dtype=compute_dtype)
        if not info.get("graphs"):
            return loaded
        from aitune.torch._fingerprint import live_weights
        from aitune.torch.backend._graphs import CapturedGraph

        example = samples[0]
        return CapturedGraph(loaded, example.args, example.kwargs, device, keep=list(live_weights(module)),
                             compute_dtype=compute_dtype, runs_no_python=True)
