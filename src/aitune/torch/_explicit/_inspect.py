"""`ait.inspect`: run a dataset once and tell where the time goes, to choose the modules to wrap.

Candidates are the top-level modules: for an nn.Module, the model itself and its direct children; for any other
object (a pipeline), its nn.Module attributes and the modules in its list, tuple and dict attributes, one level
deep. Forward pre- and post-hooks count calls, distinct input signatures and time (CUDA-synchronized when the
module is on a CUDA device); they are removed afterwards, leaving the model exactly as it was.

Known limits: timing is wall-clock in Python, synchronized around each call, so nested modules overlap (the
model's own row includes its children's). Calls of an `ait.Module` served by an engine run no hooks and are not
counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from aitune.torch._errors import UsageError
from aitune.torch._explicit._dataset import run_dataset
from aitune.torch._explicit._module import runtime_of
from aitune.torch._samples import InputNormalizer, signature_key

logger = logging.getLogger(__name__)


@dataclass
class ModuleInfo:
    """One candidate module of `ait.inspect`; `ait.wrap` accepts a list of these."""

    #: Attribute path from the inspected object ("unet", "encoder", "text_encoders.0"); "" for the model itself.
    path: str
    #: How the wrapper will be named: the path, or the class name for the model itself.
    name: str
    module: torch.nn.Module = field(repr=False)
    cls: str
    parameters: int
    wrapped: bool = False
    calls: int = 0
    signatures: int = 0
    seconds: float = 0.0
    #: Share of the total run time spent in this module (0..1).
    share: float = 0.0


class InspectResult:
    """What `ait.inspect` measured: `describe()` for a table, `get_modules()` for `ait.wrap`."""

    def __init__(self, modules: list[ModuleInfo], total_seconds: float, items: int) -> None:
        self.modules = modules
        self.total_seconds = total_seconds
        self.items = items

    def get_modules(self, min_share: float = 0.01) -> list[ModuleInfo]:
        """The modules worth wrapping: called, with parameters, taking at least `min_share` of the run time, and
        not inside another one chosen (for a plain model that is the model itself)."""
        chosen: list[ModuleInfo] = []
        for info in self.modules:
            if info.calls == 0 or info.parameters == 0 or info.share < min_share:
                continue
            if any(_inside(info.path, c.path) for c in chosen):
                continue
            chosen.append(info)
        return chosen

    def describe(self) -> str:
        """A readable table of the candidates (also logged at INFO)."""
        header = ("module", "class", "params", "calls", "signatures", "time ms", "share")
        rows = [(info.name + (" (ait.Module)" if info.wrapped else ""), info.cls, f"{info.parameters:,}",
                 str(info.calls), str(info.signatures), f"{info.seconds * 1000:.2f}", f"{info.share:.1%}")
                for info in self.modules]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in [header, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(f"{self.items} input(s), {self.total_seconds * 1000:.2f} ms in total")
        text = "\n".join(lines)
        logger.info("ait.inspect:\n%s", text)
        return text

    def __repr__(self) -> str:
        return f"InspectResult({len(self.modules)} module(s), {self.items} input(s))"


def _inside(path: str, ancestor: str) -> bool:
    return ancestor == "" or path == ancestor or path.startswith(ancestor + ".")


def candidates(obj: Any) -> list[tuple[str, torch.nn.Module]]:
    """(path, module) of the top-level modules of `obj`, each module once."""
    pairs: list[tuple[str, torch.nn.Module]] = []
    if isinstance(obj, torch.nn.Module):
        pairs.append(("", obj))
        pairs.extend((name, child) for name, child in obj._modules.items() if child is not None)
    else:
        try:
            attributes = list(vars(obj).items())
        except TypeError:
            attributes = []
        for name, value in attributes:
            if isinstance(value, torch.nn.Module):
                pairs.append((name, value))
            elif isinstance(value, (list, tuple)):
                pairs.extend((f"{name}.{i}", v) for i, v in enumerate(value) if isinstance(v, torch.nn.Module))
            elif isinstance(value, dict):
                pairs.extend((f"{name}.{k}", v) for k, v in value.items()
                             if isinstance(k, str) and isinstance(v, torch.nn.Module))
    seen: set[int] = set()
    unique = []
    for path, module in pairs:
        inner = _inner(module)
        if id(inner) not in seen:
            seen.add(id(inner))
            unique.append((path, module))
    return unique


def _inner(module: torch.nn.Module) -> torch.nn.Module:
    rt = runtime_of(module)
    return rt.module if rt is not None else module


class _Probe:
    """The hooks of one candidate module."""

    def __init__(self, info: ModuleInfo, module: torch.nn.Module) -> None:
        self.info = info
        self.normalizer = InputNormalizer(module.forward)
        self.keys: set[Any] = set()
        self.starts: list[float] = []
        self.cuda = any(t.is_cuda for t in module.parameters())

    def pre(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.info.calls += 1
        try:
            self.keys.add(signature_key(self.normalizer.normalize(args, kwargs)))
        except TypeError:
            pass  # an unhashable plain value in the inputs: not counted as a distinct signature
        if self.cuda:
            torch.cuda.synchronize()
        self.starts.append(time.perf_counter())

    def post(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        if self.starts:
            self.info.seconds += time.perf_counter() - self.starts.pop()


def inspect(model_or_pipeline: Any, dataset: Iterable[Any],
            inference_function: Callable[..., Any] | None = None) -> InspectResult:
    """Run `dataset` once through `inference_function` (default: the model or pipeline itself; items are passed
    as in `ait.tune`) and measure the top-level modules. The model is left unchanged."""
    f = inference_function if inference_function is not None else model_or_pipeline
    if not callable(f):
        raise UsageError(f"{type(f).__name__} is not callable: pass inference_function= to say how to run it",
                         obj=f)
    probes: list[_Probe] = []
    handles: list[Any] = []
    try:
        for path, module in candidates(model_or_pipeline):
            inner = _inner(module)
            info = ModuleInfo(path=path, name=path or type(inner).__name__, module=module,
                              cls=f"{type(inner).__module__}.{type(inner).__qualname__}",
                              parameters=sum(p.numel() for p in inner.parameters()),
                              wrapped=runtime_of(module) is not None)
            probe = _Probe(info, inner)
            handles.append(inner.register_forward_pre_hook(probe.pre, with_kwargs=True))
            handles.append(inner.register_forward_hook(probe.post, always_call=True))
            probes.append(probe)
        if not probes:
            raise UsageError(f"{type(model_or_pipeline).__name__} holds no torch.nn.Module to inspect",
                             obj=model_or_pipeline)
        start = time.perf_counter()
        count = run_dataset(f, dataset)
        total = time.perf_counter() - start
    finally:
        for handle in handles:
            handle.remove()
    if count == 0:
        raise UsageError("ait.inspect got an empty dataset: pass at least one input", obj=dataset)
    for probe in probes:
        probe.info.signatures = len(probe.keys)
        probe.info.share = probe.info.seconds / total if total > 0 else 0.0
    return InspectResult([p.info for p in probes], total, count)
