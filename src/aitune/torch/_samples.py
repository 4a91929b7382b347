"""Input signatures and recorded samples.

A call's inputs are normalized against forward's parameters (so `m(x)` and `m(input=x)` are one signature),
then keyed by structure, dtypes, devices, ranks, grad and inference mode, plain values, and the modes that change
what the same code computes (`call_modes`: autocast per device type with its dtype, deterministic algorithms).
Sizes are not part of the key: each signature learns the range of every dimension from all its calls. A
`SignatureTable` holds the signatures of one module (JIT mode's tracked module, or an `ait.Module`); a
`SignatureRecord` is one of them, with its samples, its engine and its `SignatureStatus`. Signatures that differ
only in plain values are tuned up to `max_value_signatures` per module; later ones run eagerly.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import statistics
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from aitune.torch import _tree

logger = logging.getLogger(__name__)

#: The life of one input signature: recorded, then tuned (served by an engine) or left eager.
SignatureStatus = Literal["recording", "queued", "tuning", "tuned", "eager"]


class InputNormalizer:
    """Maps (args, kwargs) of one module class to an ordered {parameter name: value} view."""

    def __init__(self, forward: Any) -> None:
        self.names: list[str] = []
        self.var_positional: str | None = None
        try:
            params = inspect.signature(forward).parameters.values()
        except (TypeError, ValueError):
            params = []  # type: ignore[assignment]
        for p in params:
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                self.names.append(p.name)
            elif p.kind is p.VAR_POSITIONAL:
                self.var_positional = p.name
                break
        self._order = {n: i for i, n in enumerate(self.names)}

    def normalize(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
        named: list[tuple[str, Any]] = []
        n = len(self.names)
        for i, value in enumerate(args):
            named.append((self.names[i], value) if i < n else (f"*{self.var_positional or 'args'}[{i - n}]", value))
        if kwargs:
            order = self._order
            named.extend(sorted(kwargs.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
        return tuple(named)


#: Device types whose autocast state is part of a signature.
AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")
_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", None)

#: The modes of a call: ((device type, autocast dtype) for each device type with autocast on, deterministic
#: algorithms on). Plain values, so that a key can be stored and compared.
CallModes = tuple[tuple[tuple[str, str], ...], bool]


def call_modes() -> CallModes:
    """The modes under which the same module code computes something else: autocast (per device type, with its
    dtype) and `torch.use_deterministic_algorithms`. Cheap when autocast is off (one check)."""
    autocast: tuple[tuple[str, str], ...] = ()
    if _any_autocast is None or _any_autocast():
        autocast = tuple((d, str(torch.get_autocast_dtype(d)).removeprefix("torch."))
                         for d in AUTOCAST_DEVICE_TYPES if torch.is_autocast_enabled(d))
    return autocast, torch.are_deterministic_algorithms_enabled()


def modes_of(key: Any) -> CallModes:
    """The call modes a signature key was made under (none for keys of an older shape)."""
    return key[3] if len(key) > 3 else ((), False)


@contextlib.contextmanager
def recorded_modes(modes: CallModes) -> Iterator[None]:
    """Run aitune's own work for a signature under the modes its calls were made in (`call_modes`)."""
    autocast, deterministic = modes
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with contextlib.ExitStack() as stack:
        for device_type, dtype in autocast:
            stack.enter_context(torch.autocast(device_type=device_type, dtype=getattr(torch, dtype)))
        if deterministic != before:
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
            stack.callback(torch.use_deterministic_algorithms, before, warn_only=warn_only)
        yield


def value_blind(key: Any) -> Any:
    """`key` with the plain values of arguments left out (their types kept): keys that differ only in such values
    agree. The flags inside a state object (a cache before and after its first update) are kept."""
    if isinstance(key, tuple) and key:
        if len(key) == 3 and key[0] == "V" and isinstance(key[1], type):
            return ("V", key[1])
        if key[0] == "S":
            return key
        return tuple(value_blind(part) for part in key)
    return key


def signature_key(named: tuple[tuple[str, Any], ...]) -> Any:
    return (torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
            tuple((name, _tree.spec(value)) for name, value in named), call_modes())


@dataclass
class Sample:
    """One recorded call: copies of the inputs and of the eager outputs."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: Any
    #: Copies of the inputs after the eager call, when eager changed them in place; else None.
    inputs_after: tuple[tuple[Any, ...], dict[str, Any]] | None = None
    nbytes: int = 0
    #: The call's tensor sizes in the signature's order (`_tree.shapes_of` of the normalized inputs, as calls are
    #: routed); None where the sample was made otherwise, and then taken from its inputs as given.
    shapes: tuple[tuple[int, ...], ...] | None = None


@dataclass
class SignatureRecord:
    """What is known of one input signature of one module."""

    key: Any
    description: list[dict[str, Any]]
    #: Per tensor leaf, in `description` order: [min sizes], [max sizes].
    min_shapes: list[list[int]]
    max_shapes: list[list[int]]
    shape_counts: dict[tuple[tuple[int, ...], ...], int] = field(default_factory=dict)
    calls: int = 0
    samples: list[Sample] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    status: SignatureStatus = "recording"
    engine: Any = field(default=None, repr=False)
    #: The Backend object that built `engine` (for saving it).
    backend_obj: Any = field(default=None, repr=False)
    backend: str | None = None
    #: The winner with its settings, e.g. "TorchInductorJitBackend(mode='reduce-overhead')".
    backend_description: str | None = None
    reason: str | None = None
    eager_latency_ms: float | None = None
    tuned_latency_ms: float | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    #: Calls routed to the engine, and calls that ran eagerly because their shapes were out of range.
    engine_calls: int = 0
    out_of_range_calls: int = 0
    #: The shape range the engine was built and checked for (a snapshot; the observed range keeps growing).
    engine_range: tuple[list[list[int]], list[list[int]]] | None = None
    #: "hit" when the decision was reused from the persistent cache, "stored" when it was written there.
    cache: str | None = None
    #: One recorded sample kept after tuning (explicit API): `ait.save` stores its inputs so that `ait.load` can
    #: check the loaded engine against the model's eager outputs.
    reference: Sample | None = field(default=None, repr=False)
    #: What a recorded call (after the first) changed in the module itself (`_signature._state`); such a
    #: signature stays eager.
    state_change: str | None = None
    #: Per tensor leaf, the dimensions along which the engine may serve sizes it was not checked on (those that
    #: varied among its samples, where its backend compiles sizes symbolically); None: only its checked range.
    open_dims: list[list[int]] | None = None
    #: What a recorded call's output shares memory with (one of the module's parameters or buffers, or an
    #: input), e.g. "output.1 is the module's buffer state"; only engines that keep such aliases may serve it.
    aliases: str | None = None
    #: The module-side Python values its engine (one that runs no Python) baked in (`_signature._purity.Watch`):
    #: when one changes, the engine is dropped and the signature records afresh (`_signature._route.choose`).
    watch: Any = field(default=None, repr=False)
    #: Wall time of each recorded eager call, ms (synchronized on CUDA): where the time goes before tuning.
    recorded_ms: list[float] = field(default_factory=list, repr=False)
    #: Backends kept from this signature before tuning, and why (`_signature._decide.restrict`).
    not_tried: dict[str, str] = field(default_factory=dict)
    #: The module's state (`_signature._state.snapshot`) after the last recorded call.
    recorded_state: Any = field(default=None, repr=False)
    #: How often a watched value changed under an engine; from the second time on, `python_only` says why only
    #: backends that run the module's Python are tried for it.
    watch_changes: int = 0
    python_only: str | None = None
    #: New sizes still to be confirmed against eager on live calls before new sizes are served directly.
    size_checks_left: int = 0
    #: The tolerances those confirmations compare with.
    size_tolerances: dict[str, tuple[float, float]] | None = field(default=None, repr=False)
    #: The thread a CUDA-graph engine was captured on (cudagraph state is thread-local): only its calls are
    #: served by the engine, other threads' calls run eagerly. None for other engines.
    graph_thread: int | None = None
    #: Calls from other threads that ran eagerly because of `graph_thread`.
    other_thread_calls: int = 0
    #: The in-place check of its engine (`_signature._inplace.InPlaceCheck`), kept for the report.
    inplace: Any = field(default=None, repr=False)
    #: How a decision reused from the cache got its engine (loaded or rebuilt, seconds, the latency check).
    reuse: dict[str, Any] | None = None
    #: Its tuning found the call pure (`_signature._purity`): a whole-graph trace of it may serve and be saved.
    shown_pure: bool = False
    #: Whole-graph compiles of its forward made while tuning, shared by the candidates that differ only in CUDA
    #: graphs (`backend._inductor`); emptied when its samples are released.
    compiled: dict[str, Any] = field(default_factory=dict, repr=False)
    #: How its tuning's figures were taken: in which thread, whether the script's calls were held off, where
    #: the eager latency came from (`_signature._background`); reported as `timing`.
    timing: dict[str, Any] = field(default_factory=dict)
    #: While background tuning takes its eager latency from the script's own calls: the probe that times them.
    eager_probe: Any = field(default=None, repr=False)

    @classmethod
    def from_call(cls, key: Any, named: tuple[tuple[str, Any], ...]) -> SignatureRecord:
        description: list[dict[str, Any]] = []
        shapes: list[list[int]] = []
        for path, leaf in _tree.leaf_paths(dict(named)):
            if isinstance(leaf, torch.Tensor):
                description.append({"name": path, "dtype": str(leaf.dtype).removeprefix("torch."),
                                    "device": str(leaf.device)})
                shapes.append(list(leaf.shape))
        return cls(key=key, description=description, min_shapes=[list(s) for s in shapes],
                   max_shapes=[list(s) for s in shapes])

    def install_engine(self, result: Any, eager_latency_ms: float | None) -> None:
        """Serve this signature with the accepted candidate `result` (a `CandidateResult`) from now on, in the
        range the caller set (`freeze_engine_range`), else the range observed so far."""
        if result.engine is None:
            raise ValueError(f"{result.backend} has no engine to install")
        with self.lock:
            if self.engine_range is None:
                self.engine_range = ([list(s) for s in self.min_shapes], [list(s) for s in self.max_shapes])
            self.take_engine(result)
            self.eager_latency_ms = eager_latency_ms

    def take_engine(self, result: Any) -> None:
        """Serve this signature with an accepted candidate (a `CandidateResult`) from now on."""
        self.engine = result.engine
        self.backend_obj = result.backend_obj
        backend = result.backend_obj
        device = torch.device(self.description[0]["device"]) if self.description else torch.device("cpu")
        graphs = backend is not None and backend.uses_cuda_graphs(device)
        self.graph_thread = threading.get_ident() if graphs else None
        self.backend = type(result.backend_obj).__name__ if result.backend_obj is not None else result.backend
        self.backend_description = result.backend
        self.tuned_latency_ms = result.latency_ms
        self.reason = None
        self.status = "tuned"

    def count_out_of_range(self, name: str) -> None:
        """A tuned call whose shapes lie outside the engine's range (it runs eagerly); logged the first time."""
        self.out_of_range_calls += 1
        if self.out_of_range_calls == 1:
            logger.info("%s: shapes outside the tuned range, running eagerly", name)

    def observe(self, shapes: tuple[tuple[int, ...], ...]) -> None:
        """Count a call with these tensor sizes (`_tree.shapes_of`) and widen the ranges (caller holds `lock`)."""
        self.calls += 1
        self.shape_counts[shapes] = self.shape_counts.get(shapes, 0) + 1
        _widen(self.min_shapes, self.max_shapes, shapes)

    def freeze_engine_range(self, samples: Sequence[Sample]) -> None:
        """Remember the range the engine was checked on: that of the samples it was built from."""
        mins: list[list[int]] = []
        maxs: list[list[int]] = []
        for sample in samples:
            shapes = sample.shapes
            if shapes is None:
                shapes = tuple(tuple(t.shape) for t in _tree.tensors({"args": sample.args, "kwargs": sample.kwargs}))
            for shape in shapes[len(mins):]:  # leaves not seen yet start at this sample's sizes
                mins.append(list(shape))
                maxs.append(list(shape))
            _widen(mins, maxs, shapes)
        self.engine_range = (mins, maxs)

    def in_engine_range(self, shapes: tuple[tuple[int, ...], ...]) -> bool:
        if self.engine_range is None:
            return False
        return _within(self.engine_range[0], self.engine_range[1], shapes)

    def in_range(self, shapes: tuple[tuple[int, ...], ...]) -> bool:
        return _within(self.min_shapes, self.max_shapes, shapes)

    def open_sizes(self, checks: int, tolerances: dict[str, tuple[float, float]]) -> None:
        """Let the engine serve new sizes along the dimensions that varied in its range (`open_dims`), after
        `checks` of them have matched eager on live calls (`_route`)."""
        if self.engine_range is None:
            return
        dims = _varying(*self.engine_range)
        if not any(dims):
            return
        self.open_dims = dims
        self.size_checks_left = max(0, checks)
        self.size_tolerances = dict(tolerances)

    def close_sizes(self) -> None:
        self.open_dims = None
        self.size_checks_left = 0

    def fits_open_dims(self, shapes: tuple[tuple[int, ...], ...]) -> bool:
        """Outside the engine's range only along its open dimensions, and there at sizes of 2 or more (the
        compilers specialise sizes 0 and 1)."""
        if self.open_dims is None or self.engine_range is None:
            return False
        lo_all, hi_all = self.engine_range
        if len(shapes) != len(lo_all):
            return False
        for lo, hi, dims, shape in zip(lo_all, hi_all, self.open_dims, shapes):
            if len(shape) != len(lo):
                return False
            for i, size in enumerate(shape):
                if lo[i] <= size <= hi[i]:
                    continue
                if i not in dims or size < 2:
                    return False
        return True

    def widen_engine_range(self, shapes: tuple[tuple[int, ...], ...]) -> None:
        """The engine has served (or been confirmed on) these sizes: make them part of its range."""
        if self.engine_range is not None:
            _widen(*self.engine_range, shapes)

    @property
    def most_common_shapes(self) -> tuple[tuple[int, ...], ...] | None:
        if not self.shape_counts:
            return None
        return max(self.shape_counts.items(), key=lambda kv: kv[1])[0]

    @property
    def dynamic_dims(self) -> list[list[int]]:
        """Per tensor leaf, the dimensions whose size varied across calls."""
        return _varying(self.min_shapes, self.max_shapes)

    def to_report(self) -> dict[str, Any]:
        inputs = []
        for i, (desc, lo, hi) in enumerate(zip(self.description, self.min_shapes, self.max_shapes)):
            entry = {**desc, "min_shape": list(lo), "max_shape": list(hi)}
            if self.engine_range is not None and i < len(self.engine_range[0]):
                entry["engine_min_shape"] = self.engine_range[0][i]
                entry["engine_max_shape"] = self.engine_range[1][i]
            inputs.append(entry)
        return {"status": self.status, "backend": self.backend, "backend_description": self.backend_description,
                "reason": self.reason, "calls": self.calls,
                "engine_calls": self.engine_calls, "out_of_range_calls": self.out_of_range_calls,
                "other_thread_calls": self.other_thread_calls,
                "eager_latency_ms": _round(self.eager_latency_ms), "tuned_latency_ms": _round(self.tuned_latency_ms),
                "cache": self.cache, "inputs": inputs, "candidates": self.candidates,
                "open_dims": self.open_dims, "not_tried": dict(self.not_tried),
                "recorded_eager_ms": _round(statistics.median(self.recorded_ms)) if self.recorded_ms else None,
                "watched": [w.describe() for w in self.watch.items] if self.watch is not None else [],
                "inplace": self.inplace.to_report() if self.inplace is not None else None,
                "cache_reuse": self.reuse, "timing": dict(self.timing) or None,
                "graphs": self.engine.graph_report() if hasattr(self.engine, "graph_report") else None}


#: The key of the one record that counts the calls of signatures past `max_signatures`.
OVERFLOW = ("aitune: past max_signatures",)


class SignatureTable:
    """The input signatures of one module, keyed as `signature_key` keys them."""

    def __init__(self, forward: Any) -> None:
        self.normalizer = InputNormalizer(forward)
        self.records: dict[Any, SignatureRecord] = {}
        #: Signatures made so far per key with plain values left out (`value_blind`).
        self._value_variants: dict[Any, int] = {}
        #: Calls looked up (recorded, routed, or run eagerly while tracked).
        self.calls = 0
        self._lock = threading.Lock()

    def lookup(self, args: tuple[Any, ...], kwargs: dict[str, Any], name: str
               ) -> tuple[SignatureRecord, tuple[tuple[int, ...], ...]]:
        """The signature of this call (made on its first call) and the call's tensor shapes, counted."""
        named = self.normalizer.normalize(args, kwargs)
        key = signature_key(named)
        sig = self.records.get(key)
        if sig is None:
            with self._lock:
                sig = self.records.get(key)
                if sig is None and self._full(name):
                    overflow = self.records[OVERFLOW]
                    with overflow.lock:
                        overflow.calls += 1
                        self.calls += 1
                    return overflow, _tree.shapes_of(named)
                if sig is None:
                    sig = SignatureRecord.from_call(key, named)
                    self._limit_values(sig, key, name)
                    self.records[key] = sig
                    if len(self.records) > 1 and sig.status == "recording":
                        logger.info("%s: new input signature #%d (grad and inference mode, dtypes, devices, ranks "
                                    "and plain values are part of a signature)", name, len(self.records))
        shapes = _tree.shapes_of(named)
        with sig.lock:  # several threads may call the same module
            sig.observe(shapes)
            self.calls += 1
        return sig, shapes

    def _full(self, name: str) -> bool:
        """Past `max_signatures` (global setting), new signatures are not made: their calls share one eager
        record (`OVERFLOW`), made and logged the first time (caller holds `_lock`)."""
        if OVERFLOW in self.records:
            return True
        from aitune.torch.config import config as global_config

        limit = int(global_config.max_signatures)
        if len(self.records) < limit:
            return False
        overflow = SignatureRecord(key=OVERFLOW, description=[], min_shapes=[], max_shapes=[], status="eager",
                                   reason=f"more than {limit} input signatures (max_signatures): calls with a new "
                                          "signature run eagerly, counted here")
        self.records[OVERFLOW] = overflow
        logger.info("%s: %s", name, overflow.reason)
        return True

    def _limit_values(self, sig: SignatureRecord, key: Any, name: str) -> None:
        """Past `max_value_signatures` signatures that differ only in plain values (`model(x, step)` in a loop),
        a new one runs eagerly instead of being tuned once more (caller holds `_lock`)."""
        from aitune.torch.config import config as global_config

        blind = value_blind(key)
        count = self._value_variants.get(blind, 0) + 1
        self._value_variants[blind] = count
        limit = int(global_config.max_value_signatures)
        if count <= limit:
            return
        sig.status = "eager"
        sig.reason = (f"more than {limit} signatures differ only in plain Python values (each value is a signature "
                      "of its own); later values run eagerly (max_value_signatures)")
        if count == limit + 1:
            logger.info("%s: %s", name, sig.reason)

    def index_of(self, sig: SignatureRecord) -> int:
        """The order in which `sig` was first called (0 for the first signature)."""
        return next((i for i, s in enumerate(self.records.values()) if s is sig), 0)

    def values(self) -> list[SignatureRecord]:
        return list(self.records.values())


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _widen(mins: list[list[int]], maxs: list[list[int]], shapes: tuple[tuple[int, ...], ...]) -> None:
    """Widen the per-leaf [min sizes], [max sizes] in place to include `shapes`."""
    for lo, hi, shape in zip(mins, maxs, shapes):
        for i, size in enumerate(shape):
            if size < lo[i]:
                lo[i] = size
            if size > hi[i]:
                hi[i] = size


def _varying(mins: list[list[int]], maxs: list[list[int]]) -> list[list[int]]:
    """Per leaf, the dimensions whose min and max sizes differ."""
    return [[i for i, (a, b) in enumerate(zip(lo, hi)) if a != b] for lo, hi in zip(mins, maxs)]


def _within(mins: list[list[int]], maxs: list[list[int]], shapes: tuple[tuple[int, ...], ...]) -> bool:
    if len(shapes) != len(mins):
        return False
    for lo, hi, shape in zip(mins, maxs, shapes):
        if len(shape) != len(lo):
            return False
        for a, size, b in zip(lo, shape, hi):
            if size < a or size > b:
                return False
    return True


def first_device(samples: Sequence[Sample]) -> torch.device:
    for s in samples:
        for t in _tree.tensors((s.args, s.kwargs)):
            return t.device
    return torch.device("cpu")
