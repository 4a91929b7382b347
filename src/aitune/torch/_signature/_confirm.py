"""Live confirmation of an engine that came from a file (the persistent cache or a checkpoint).

Such an engine was checked against eager on stored inputs, but those were chosen by whoever wrote the file (a
checkpoint) or are only a few samples (the cache). So before it serves a call on its own, `LiveCheck` shadows it
on the first `confirm_calls` live calls of the process: each of those calls runs the module eagerly (the caller
gets eager's result, hooks and all), and the engine on copies of the same inputs; outputs and in-place input
changes must match eager as in tuning. Once they have, the signature's engine is swapped for the bare engine
(no cost from then on). A mismatch or an error drops it: `EngineRejected` carries eager's output, so the call
that found the problem still returns the right result and runs the module only once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from aitune.torch import _tree
from aitune.torch._checking import compare_outputs
from aitune.torch._samples import SignatureRecord
from aitune.torch._signature._inplace import ACTIVITY
from aitune.torch._signature._rng import rng_kept
from aitune.torch.backend._base import Engine

logger = logging.getLogger(__name__)


class EngineRejected(Exception):
    """An engine on probation did not match eager on a live call; `output` is eager's result for that call."""

    def __init__(self, reason: str, output: Any) -> None:
        super().__init__(reason)
        self.output = output


class LiveCheck(Engine):
    """`engine` on probation for `calls` live calls of `module` (see the module docstring)."""

    def __init__(self, engine: Engine, module: torch.nn.Module, sig: SignatureRecord, calls: int,
                 tolerances: dict[str, tuple[float, float]], *, name: str, origin: str,
                 on_reject: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self._module = module
        self._sig = sig
        self._left = calls
        self._calls = calls
        self._tolerances = dict(tolerances)
        self._name = name
        self._origin = origin
        self._on_reject = on_reject
        self._lock = threading.Lock()
        # Weight checks read the flag of the engine on probation (a class attribute on other engines).
        object.__setattr__(self, "bakes_weights", engine.bakes_weights)
        object.__setattr__(self, "binds_weight_storage", engine.binds_weight_storage)

    def __getattr__(self, name: str) -> Any:  # compute_dtype, artifact_dir, ...: the wrapped engine's
        if name == "engine":
            raise AttributeError(name)
        return getattr(self.engine, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.confirm(lambda: self._module(*args, **kwargs), args, kwargs, contextlib.nullcontext)

    def confirm(self, eager: Callable[[], Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                own_work: Callable[[], contextlib.AbstractContextManager[Any]]) -> Any:
        """One call on probation: `eager()` serves it (as the caller's call would have run: where aitune runs the
        module's hooks around this call, the forward alone, so they run once), the engine runs on copies of its
        inputs inside `own_work()` (aitune's own-work guard)."""
        out, why = shadow(self.engine, eager, args, kwargs, _tree.clone((args, kwargs)), self._tolerances, own_work,
                          where=" on a live call")
        if why is not None:
            self._reject(why, out)
        with self._lock:
            self._left -= 1
            done = self._left == 0
        if done:
            if self._sig.engine is self:
                self._sig.engine = self.engine
            logger.info("%s: the %s engine %s matched eager on %d live call(s); it serves from now on", self._name,
                        self._sig.backend_description or "", self._origin, self._calls)
        return out

    def _reject(self, why: str, out: Any) -> None:
        logger.warning("%s: dropping the %s engine %s: %s", self._name, self._sig.backend_description or "",
                       self._origin, why)
        if self._on_reject is not None:
            try:
                self._on_reject()
            except Exception:  # forgetting a cache entry is best effort: the engine is dropped either way
                logger.debug("on_reject failed", exc_info=True)
        raise EngineRejected(why, out)

    def save(self, directory: Path) -> None:
        self.engine.save(directory)

    def release(self) -> None:
        self.engine.release()


def shadow(engine: Engine, eager: Callable[[], Any], args: tuple[Any, ...], kwargs: dict[str, Any],
           copies: tuple[tuple[Any, ...], dict[str, Any]], tolerances: dict[str, tuple[float, float]],
           own_work: Callable[[], contextlib.AbstractContextManager[Any]], *, where: str = "",
           raise_errors: bool = False) -> tuple[Any, str | None]:
    """Serve a call with `eager()` and run `engine` on `copies` of its inputs (inside `own_work()`, the random
    generators kept): (eager's output, why the engine disagreed, or None when its outputs and its in-place input
    changes matched eager's). An error of the engine is a disagreement, unless `raise_errors`."""
    ACTIVITY.bump()
    out = eager()
    try:
        with own_work(), rng_kept():
            got = engine(*copies[0], **copies[1])
    except Exception as e:  # the engine's failure is the verdict; the call has eager's result
        if raise_errors:
            raise
        return out, f"it failed{where} ({type(e).__name__}: {str(e)[:200]})"
    dtype = getattr(engine, "compute_dtype", None)
    verdict = compare_outputs(out, got, tolerances, dtype)
    if not verdict.ok:
        return out, f"its outputs differ from eager{where} ({verdict.reason})"
    written = compare_outputs((args, kwargs), copies, tolerances, dtype, path="inputs after the call")
    if not written.ok:
        return out, f"it changes its inputs in place differently from eager{where} ({written.reason})"
    return out, None


def on_probation(engine: Engine, module: torch.nn.Module, sig: SignatureRecord, calls: int,
                 tolerances: dict[str, tuple[float, float]], *, name: str, origin: str,
                 on_reject: Callable[[], None] | None = None) -> Engine:
    """`engine` wrapped in a LiveCheck, or as it is when `calls` is 0."""
    if calls <= 0:
        return engine
    return LiveCheck(engine, module, sig, calls, tolerances, name=name, origin=origin, on_reject=on_reject)
