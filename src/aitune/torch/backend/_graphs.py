"""CapturedGraph: a CUDA graph that aitune captures itself around an engine whose call is static; GraphAtSwitch:
the same, captured on the serving thread's own calls after background tuning installed the engine.

The engine runs on static copies of one sample's inputs, a few times on a side stream (lazy initialisation:
kernels loaded, workspaces allocated), then once under `torch.cuda.graph` in the thread-local capture mode, so
other threads' CUDA work is not caught in the capture. A call copies its inputs into the static copies, replays
the graph and returns copies of the static outputs (the next replay overwrites them), so a caller keeping an
earlier output never sees it change; `_tree.refill` refuses a call whose structure, sizes, dtypes or plain values
differ from the capture's, and that call fails (aitune then serves it eagerly and drops the engine).

The graph reads the module's weights where they were at capture: writes in place flow through (as with
cudagraph trees), but a weight moved to new memory (`p.data = q`, a replaced parameter, a reload that assigns)
would not. The engine therefore says so (`binds_weight_storage`): the fronts drop it when a weight's storage
moved, and it keeps the tensors it was captured with alive, so the memory it reads is never reused while it
exists. Like every CUDA-graph engine it serves only the thread that captured it (`SignatureRecord.graph_thread`).

GraphAtSwitch serves with the engine inside it and moves to a graph on the calls of the thread that calls it
first (background tuning's worker may neither capture nor time a graph while the script runs, see
`_signature._background`), once the engine itself has passed the in-place check. One call each, so that none
is slowed much: the first runs the engine (the thread's
libraries warm up); the second captures, served by the warm-up run on its inputs; the third replays and is
compared with the engine on the same inputs (a mismatch ends it: the engine serves alone); then graph and engine
take turns in blocks, timed by the period between the signature's consecutive calls, and the faster serves from
then on. Calls from other threads, and calls whose inputs differ from the capture, run the engine; once other
threads call modules, no graph is captured (their device synchronizations would break the capture).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from aitune.torch import _tree
from aitune.torch.backend._base import Engine

logger = logging.getLogger(__name__)

#: Runs of the engine before the capture.
WARMUP_RUNS = 2
#: What `CapturedGraph.replay` returns for inputs that differ from the capture's.
MISFIT = object()


class CapturedGraph(Engine):
    """`fn(*args, **kwargs)` captured as one CUDA graph on `device` (see the module docstring)."""

    #: Stale once a weight's storage moves (see the module docstring); in-place writes are read where they are.
    binds_weight_storage = True
    #: What `fn` is (its compute dtype, whether it replays a saved trace) the graph is too.
    runs_no_python = False

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], device: torch.device,
                 *, keep: Sequence[torch.Tensor] = (), compute_dtype: torch.dtype | None = None,
                 runs_no_python: bool = False, warmup_runs: int = WARMUP_RUNS) -> None:
        if device.type != "cuda":
            raise ValueError(f"a CUDA graph needs a CUDA device, not {device}")
        self.compute_dtype = compute_dtype
        self.runs_no_python = runs_no_python
        self.inner = fn
        self._keep = list(keep)
        self._static = _tree.clone((args, kwargs))
        static_args, static_kwargs = self._static
        stream = torch.cuda.Stream(device)
        current = torch.cuda.current_stream(device)
        stream.wait_stream(current)
        #: The last warm-up run's outputs: fresh tensors, computed from this call's inputs.
        self.warm_outputs: Any = None
        with torch.cuda.stream(stream):
            for _ in range(max(1, warmup_runs)):
                self.warm_outputs = fn(*static_args, **static_kwargs)
        current.wait_stream(stream)
        torch.cuda.synchronize(device)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph, capture_error_mode="thread_local"):
            self._outputs = fn(*static_args, **static_kwargs)
        torch.cuda.synchronize(device)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.replay(args, kwargs)
        if out is MISFIT:
            raise ValueError("this call's inputs differ in structure, size, dtype or plain values from those the "
                             "CUDA graph was captured with")
        return out

    def replay(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The graph's outputs for these inputs (copies), or MISFIT when they differ from the capture's."""
        if not _tree.refill(self._static, (args, kwargs)):
            return MISFIT
        self._graph.replay()
        return _tree.tree_map(torch.Tensor.clone, self._outputs)

    def artifact(self) -> Callable[[Path], None]:
        """The saved form of the engine it replays, marked to be captured again where it is loaded."""
        inner = getattr(self.inner, "artifact", None)
        if inner is None:
            raise NotImplementedError("the engine inside this CUDA graph cannot be saved")
        writer: Callable[[Path], None] = inner(graphs=True)
        return writer

    def release(self) -> None:
        self._graph.reset()
        self._outputs = None
        self._keep = []


#: Calls of the graph-against-engine turns (`_signature._inplace.InPlaceCheck`: blocks of a quarter, up to three
#: windows; inconclusive keeps the graph).
TURN_CALLS = 16


class GraphAtSwitch(Engine):
    """`inner` (an engine whose call is static), moving to a CUDA graph on its serving thread's calls (see the
    module docstring). `tolerances` compare graph and engine."""

    binds_weight_storage = True

    def __init__(self, inner: Engine, device: torch.device, *, keep: Sequence[torch.Tensor], turns: Any,
                 tolerances: dict[str, tuple[float, float]], crowded: Callable[[], str | None] = lambda: None,
                 ready: Callable[[], bool] = lambda: True) -> None:
        self.inner = inner
        #: The timed turns (`_signature._inplace.InPlaceCheck`: its "engine" is the graph, its "eager" the engine
        #: inside), counting a period only between consecutive calls of the signature.
        self._turns = turns
        #: False while the engine itself is still being judged in place (`_signature._inplace`): the graph's
        #: steps wait, so that neither comparison times the other's calls.
        self._ready = ready
        #: Why a capture would not be safe now (other threads on the GPU: their synchronizations break a capture).
        self._crowded = crowded
        self.device = device
        self.compute_dtype = getattr(inner, "compute_dtype", None)
        self.runs_no_python = getattr(inner, "runs_no_python", False)
        self.bakes_weights = getattr(inner, "bakes_weights", False)
        self._keep = list(keep)
        self._tolerances = tolerances
        self._thread: int | None = None
        self._lock = threading.Lock()
        self.stage = "warm-up"  # -> capture -> compare -> turns -> graph | engine
        self.graph: CapturedGraph | None = None
        self.why: str | None = None
        self.capture_ms: float | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        me = threading.get_ident()
        with self._lock:
            if self._thread is None:
                self._thread = me
        if me != self._thread or self.stage == "engine" or (self.stage == "warm-up" and not self._ready()):
            return self.inner(*args, **kwargs)
        stage = self.stage
        if stage == "graph":
            return self._replay(args, kwargs)
        if stage == "warm-up":
            self.stage = "capture"
            return self.inner(*args, **kwargs)
        if stage == "capture":
            return self._capture(args, kwargs)
        if stage == "compare":
            return self._compare(args, kwargs)
        return self._turn(args, kwargs)

    def _replay(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        graph = self.graph
        out = graph.replay(args, kwargs) if graph is not None else MISFIT
        return self.inner(*args, **kwargs) if out is MISFIT else out

    def _capture(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        crowded = self._crowded()
        if crowded is not None:
            self._give_up(f"not captured: {crowded}")
            return self.inner(*args, **kwargs)
        start = time.perf_counter()
        try:
            graph = CapturedGraph(self.inner, args, kwargs, self.device, keep=self._keep,
                                  compute_dtype=self.compute_dtype, runs_no_python=self.runs_no_python,
                                  warmup_runs=1)
        except Exception as e:  # the graph is an improvement only: the engine serves on
            self._give_up(f"capturing the CUDA graph failed: {type(e).__name__}: {e}"[:300])
            return self.inner(*args, **kwargs)
        self.capture_ms = (time.perf_counter() - start) * 1000
        self.graph = graph
        out, graph.warm_outputs = graph.warm_outputs, None
        self.stage = "compare"
        return out

    def _compare(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        from aitune.torch._checking import compare_outputs

        replayed = self._replay(args, kwargs)
        out = self.inner(*args, **kwargs)
        checked = compare_outputs(out, replayed, self._tolerances, self.compute_dtype)
        if not checked.ok:
            self._give_up(f"the CUDA graph's outputs differ from the engine's: {checked.reason}"[:300])
        else:
            self.stage = "turns"
        return out

    def _turn(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        turns = self._turns
        route = turns.route()
        if route == "done":
            if turns.verdict == "reverted":
                self._give_up(str(turns.why))
            else:
                self.stage = "graph"
                self.why = turns.why or (f"the CUDA graph is faster in place: {turns.engine_ms:.3f} ms vs "
                                         f"{turns.eager_ms:.3f} ms between calls")
                logger.info("CUDA graph captured on the serving thread kept: %s", self.why)
            route = "engine" if self.stage == "graph" else "eager"
        return self._replay(args, kwargs) if route == "engine" else self.inner(*args, **kwargs)

    def _give_up(self, why: str) -> None:
        self.stage = "engine"
        self.why = why
        logger.info("CUDA graph around the engine dropped: %s", why)
        graph, self.graph = self.graph, None
        if graph is not None:
            graph.release()

    def graph_report(self) -> dict[str, Any]:
        turns = self._turns.to_report()
        return {"stage": self.stage, "why": self.why, "capture_ms": None if self.capture_ms is None else
                round(self.capture_ms, 2), "graph_period_ms": turns["engine_period_ms"],
                "engine_period_ms": turns["eager_period_ms"]}

    def artifact(self) -> Callable[[Path], None]:
        """The saved form of the engine inside (a loaded one is wrapped again where it is used)."""
        inner = getattr(self.inner, "artifact", None)
        if inner is None:
            raise NotImplementedError("the engine inside cannot be saved")
        writer: Callable[[Path], None] = inner()
        return writer

    def release(self) -> None:
        graph, self.graph = self.graph, None
        if graph is not None:
            graph.release()
        self._keep = []
