"""The per-module runtime of the explicit API (`ait.Module`): its state, and each call through the shared
signature runtime (`aitune.torch._signature`).

A `ModuleRuntime` belongs to one `ait.Module` wrapper. Its states (`RuntimeState`):

    passthrough -> calls run eagerly, nothing is recorded (the initial state)
    recording   -> calls run eagerly; up to `max_num_samples_stored` samples per input signature are kept
    tuning      -> `ait.tune(..., background=True)` queued its signatures: calls run eagerly until the worker
                   has decided a signature, then as in `tuned`; nothing new is recorded
    tuned       -> calls whose signature has an engine, with shapes in the engine's range, run the engine

Signatures are keyed exactly as in JIT mode (`_samples.SignatureTable`), so a decision, a sample or a saved
engine means the same thing in both modes. Eager runs set the guard's `wrapped` flag, so JIT mode, when enabled
as well, neither tracks nor tunes a wrapped module or anything under it.

Known limits: a call served by an engine runs no forward hooks of the wrapped module (the engine replaces its
whole forward; hooks fire on eager calls). Engines that hold a copy of the weights are dropped when the weights
change (checked on every engine call); engines that read the live weights are dropped when the module is moved,
cast or reloaded through the wrapper or a parent (`.to()`, `.half()`, `load_state_dict`), not when a parameter
is replaced by assignment.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch.compiler import is_dynamo_compiling

from aitune.torch._errors import AITuneError
from aitune.torch._fingerprint import weights_state
from aitune.torch._samples import SignatureRecord, SignatureTable
from aitune.torch._signature._background import QUIET
from aitune.torch._signature._hooks import (
    HOOKS,
    blocked_by,
    call_with_hooks,
    hooked_submodule,
    keep_watching,
    own_forward_hooks,
)
from aitune.torch._signature._record import record_call, release_samples
from aitune.torch._signature._route import (
    FAIL_OPEN,
    GUARD,
    choose,
    drop_engine,
    run_confirming_size,
    run_engine,
    tracing,
)
from aitune.torch._signature._weights import DATA_ACCESSES, Baseline, watch
from aitune.torch.tune_strategy._base import CandidateResult, TuneStrategy

logger = logging.getLogger(__name__)

RuntimeState = Literal["passthrough", "recording", "tuning", "tuned"]


def _settings() -> Any:
    from aitune.torch.config import config

    return config


class LiveRuntimes:
    """Every live runtime, in creation order, for `ait.tune(func=...)`, which cannot reach wrappers from a plain
    function."""

    def __init__(self) -> None:
        self._runtimes: weakref.WeakSet[ModuleRuntime] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._serial = 0

    def add(self, runtime: ModuleRuntime) -> int:
        with self._lock:
            self._serial += 1
            self._runtimes.add(runtime)
            return self._serial

    def alive(self) -> list[ModuleRuntime]:
        with self._lock:
            return sorted(self._runtimes, key=lambda rt: rt.serial)


LIVE = LiveRuntimes()


class ModuleRuntime:
    """State of one `ait.Module`: its signatures, samples and engines. See the module docstring for the states."""

    def __init__(self, module: torch.nn.Module, name: str, strategy: TuneStrategy | None = None,
                 strategies: Sequence[TuneStrategy | None] | Mapping[int, TuneStrategy | None] | None = None) -> None:
        if strategy is not None and not hasattr(strategy, "tune"):
            raise TypeError(f"ait.Module({name!r}): strategy must be a tune strategy such as "
                            f"HighestThroughputStrategy(), got {type(strategy).__name__}")
        self.name = name
        self.module = module
        self.table = SignatureTable(module.forward)
        self.signatures = self.table.records
        self.state: RuntimeState = "passthrough"
        self.strategy = strategy
        self.strategies: dict[int, TuneStrategy | None] = (
            dict(strategies) if isinstance(strategies, Mapping) else dict(enumerate(strategies or ())))
        self.lock = threading.RLock()
        #: `weights_state(module)` when the engines were installed.
        self._weights: tuple[tuple[Any, ...], int] | None = None
        #: The sampled weights when engines holding a copy of them were installed (`_signature._weights`).
        self._baseline: Baseline | None = None
        #: `_weights.DATA_ACCESSES` when the weights were last seen where the engines read them.
        self._data_accesses = -1
        #: `_signature._hooks.HOOKS` when the submodules' hooks were last checked.
        self._hook_epoch = -1
        self.serial = LIVE.add(self)

    @property
    def calls(self) -> int:
        """Calls seen while recording or tuned (passthrough calls are not counted: that path does no work)."""
        return self.table.calls

    # -- states ------------------------------------------------------------------------------------------------

    def enable_recording(self) -> None:
        """Record the next calls (tuned signatures keep serving their engines; undecided ones and signatures that
        stayed eager before are recorded, so a later `ait.tune` tries them again)."""
        with self.lock:
            for sig in self.signatures.values():
                if sig.status == "eager":
                    sig.status = "recording"
                    sig.reason = None
            self.state = "recording"

    def enable_passthrough(self, force: bool = False) -> None:
        """Run every call eagerly and record nothing; recorded samples are released.

        From "tuned" only with `force=True`, which drops the engines (raises AITuneError otherwise).
        """
        with self.lock:
            if self.state == "tuned" and not force:
                raise AITuneError(f"{self.name} is tuned; enable_passthrough(force=True) drops its engines")
            for sig in self.signatures.values():
                drop_engine(sig)
                release_samples(sig)
                if sig.status in ("tuned", "tuning"):
                    sig.status = "recording"
            self.state = "passthrough"

    def settle(self) -> None:
        """After a tuning run: "tuned" when any signature has an engine, else "passthrough"."""
        with self.lock:
            tuned = any(s.status == "tuned" and s.engine is not None for s in self.signatures.values())
            self.state = "tuned" if tuned else "passthrough"

    def strategy_for(self, index: int) -> TuneStrategy | None:
        """The strategy for the signature first seen `index`-th: `strategies` overrides `strategy`."""
        chosen = self.strategies.get(index)
        return chosen if chosen is not None else self.strategy

    def installed(self) -> None:
        """A decision installed an engine on one of the signatures: serve it, against today's weights, and notice
        hooks registered below the module from now on."""
        keep_watching()
        with self.lock:
            self._weights = weights_state(self.module)
            baked = any(getattr(s.engine, "bakes_weights", False) for s in self.signatures.values())
            self._baseline = Baseline(self.module) if baked else None
            if any(getattr(s.engine, "binds_weight_storage", False) for s in self.signatures.values()):
                watch()  # a weight moved through `Parameter.data` must be noticed
            self._data_accesses = DATA_ACCESSES.value
            self._hook_epoch = HOOKS.value
            self.state = "tuned"

    def install(self, sig: SignatureRecord, result: CandidateResult, eager_latency_ms: float | None) -> None:
        """Serve `sig` with `result.engine` (an accepted candidate, e.g. loaded from a checkpoint) from now on.

        The caller sets `sig.engine_range` beforehand; when it has not, the signature's observed range is used.
        """
        with self.lock:
            self.signatures[sig.key] = sig
        sig.install_engine(result, eager_latency_ms)
        self.installed()

    def describe(self) -> dict[str, Any]:
        """What is known of this module, in the shape of a JIT report entry."""
        module = self.module
        tuned = [s for s in self.signatures.values() if s.status == "tuned"]
        best = max(tuned, key=lambda s: s.calls) if tuned else None
        reasons = [s.reason for s in self.signatures.values() if s.reason]
        return {
            "name": self.name, "class": f"{type(module).__module__}.{type(module).__qualname__}",
            "state": self.state, "backend": best.backend if best else None,
            "reason": None if best else (reasons[0] if reasons else None), "calls": self.calls,
            "eager_latency_ms": best.eager_latency_ms if best else None,
            "tuned_latency_ms": best.tuned_latency_ms if best else None,
            "signatures": [s.to_report() for s in self.signatures.values()],
        }

    # -- calls -------------------------------------------------------------------------------------------------

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if QUIET.active and QUIET.enter():  # background tuning is timing: wait for its slice to end
            try:
                return self._call(args, kwargs)
            finally:
                QUIET.leave()
        return self._call(args, kwargs)

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        module = self.module
        if GUARD.own_work or tracing():
            return module(*args, **kwargs)
        if self.state == "passthrough" or module.training:
            # Training-mode calls are never recorded or routed.
            return self.eager(args, kwargs)
        if blocked_by(module) is not None:
            return self.eager(args, kwargs)  # hooks no engine can honour: torch runs the call and its hooks
        if self._hook_epoch != HOOKS.value:
            self._hook_epoch = HOOKS.value
            below = hooked_submodule(module)
            if below is not None and self.state == "tuned":
                self.invalidate(f"its submodule {below} got hooks, which an engine fusing it would skip")
        if own_forward_hooks(module):
            return call_with_hooks(module, lambda a, k: self._route(a, k, forward_only=True), args, kwargs)
        return self._route(args, kwargs, forward_only=False)

    def _route(self, args: tuple[Any, ...], kwargs: dict[str, Any], *, forward_only: bool) -> Any:
        strict = bool(_settings().strict)

        def eager() -> Any:
            return self.eager(args, kwargs, forward_only=forward_only)

        try:
            sig, shapes = self.table.lookup(args, kwargs, self.name)
            if sig.engine is not None and not self._weights_current(sig):
                route = "eager"
            else:
                route = choose(sig, shapes, self.name, self.module)
            if route == "record" and self.state != "recording":
                route = "eager"
        except AITuneError:
            raise
        except Exception as e:  # aitune's own logic failed (not the user's forward): the fail-open policy
            FAIL_OPEN.handle(f"handling a call of {self.name}", e, strict=strict)
            return eager()
        if route == "engine":
            out = run_engine(sig, args, kwargs, eager, name=self.name, strict=strict)
            if sig.engine is None:  # dropped: it failed, or failed its live confirmation
                self.settle()
            return out
        if route == "confirm_size":
            return run_confirming_size(sig, shapes, args, kwargs, eager, name=self.name, strict=strict)
        if route == "record":
            settings = _settings()
            return record_call(sig, args, kwargs, eager, name=self.name, module=self.module, shapes=shapes,
                               max_samples=int(settings.max_num_samples_stored),
                               max_bytes=int(settings.max_samples_bytes),
                               fail_open=lambda where, e: FAIL_OPEN.handle(where, e, strict=strict))
        probe = sig.eager_probe  # background tuning takes its eager latency from this call
        return eager() if probe is None else probe.run(eager)

    def eager(self, args: tuple[Any, ...], kwargs: dict[str, Any], *, forward_only: bool = False) -> Any:
        """The wrapped module's own call, with its hooks (its forward alone when they are being run around this
        call), kept out of JIT mode (the guard's `wrapped` flag, set inline: this is the whole cost of a wrapper in
        passthrough)."""
        module = self.module
        if is_dynamo_compiling():
            return module(*args, **kwargs)
        guard = GUARD
        prev = guard.wrapped
        guard.wrapped = True
        try:
            return module.forward(*args, **kwargs) if forward_only else module(*args, **kwargs)
        finally:
            guard.wrapped = prev

    # -- weights -----------------------------------------------------------------------------------------------

    def _weights_current(self, sig: SignatureRecord) -> bool:
        """For an engine holding a copy of the weights: are they still those it was built from? Else drop."""
        if getattr(sig.engine, "binds_weight_storage", False) and self._weights is not None:
            # A CUDA graph aitune captured reads the weights where they were: only a move makes it stale.
            if self._data_accesses == DATA_ACCESSES.value or weights_state(self.module)[0] == self._weights[0]:
                self._data_accesses = DATA_ACCESSES.value
                return True
            self.invalidate("weights moved to new memory")
            return False
        if not getattr(sig.engine, "bakes_weights", False) or self._weights is None:
            return True
        if weights_state(self.module) == self._weights and not self._written_through_data():
            return True
        self.invalidate("weights changed")
        return False

    def check_weights(self, what: str) -> None:
        """After a move, cast or reload: drop every engine if the weights are not those they were built from."""
        if self._weights is None or (weights_state(self.module) == self._weights
                                     and not self._written_through_data()):
            return
        self.invalidate(what)

    def _written_through_data(self) -> bool:
        """Weights changed through `Parameter.data` since the engines were built (no version counter moved)."""
        return self._baseline is not None and self._baseline.changed(self.module)

    def invalidate(self, why: str) -> None:
        """Drop every engine (never serve a stale one); the module runs eagerly until it is tuned again."""
        with self.lock:
            dropped = [s for s in self.signatures.values() if s.engine is not None]
            for sig in self.signatures.values():
                drop_engine(sig)
                sig.reference = None
                if sig.status in ("tuned", "eager"):
                    sig.status = "recording"
                release_samples(sig)
            self._weights = None
            if self.state == "tuned":
                self.state = "passthrough"
        if dropped:
            logger.info("%s: %s; dropped its engine(s), it runs eagerly until ait.tune runs again", self.name, why)

    # -- helpers -----------------------------------------------------------------------------------------------

    def recorded(self) -> Iterator[SignatureRecord]:
        """Signatures waiting to be tuned: undecided, with samples."""
        return (s for s in list(self.signatures.values()) if s.status == "recording" and s.samples)

    def __repr__(self) -> str:
        return f"ModuleRuntime({self.name!r}, state={self.state!r}, signatures={len(self.signatures)})"
