"""CapturedGraph: a CUDA graph that aitune captures itself around an engine whose call is static.

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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from aitune.torch import _tree
from aitune.torch.backend._base import Engine

#: Runs of the engine before the capture.
WARMUP_RUNS = 2


class CapturedGraph(Engine):
    """`fn(*args, **kwargs)` captured as one CUDA graph on `device` (see the module docstring)."""

    #: Stale once a weight's storage moves (see the module docstring); in-place writes are read where they are.
    binds_weight_storage = True
    #: What `fn` is (its compute dtype, whether it replays a saved trace) the graph is too.
    runs_no_python = False

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], device: torch.device,
                 *, keep: Sequence[torch.Tensor] = (), compute_dtype: torch.dtype | None = None,
                 runs_no_python: bool = False) -> None:
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
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_RUNS):
                fn(*static_args, **static_kwargs)
        current.wait_stream(stream)
        torch.cuda.synchronize(device)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph, capture_error_mode="thread_local"):
            self._outputs = fn(*static_args, **static_kwargs)
        torch.cuda.synchronize(device)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not _tree.refill(self._static, (args, kwargs)):
            raise ValueError("this call's inputs differ in structure, size, dtype or plain values from those the "
                             "CUDA graph was captured with")
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
