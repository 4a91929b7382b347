"""The per-module runtime of the explicit API (`ait.Module`): states, recording, routing and installed engines.

A `ModuleRuntime` belongs to one `ait.Module` wrapper. Its states:

    passthrough -> calls run eagerly, nothing is recorded (the initial state)
    recording   -> calls run eagerly; up to `max_num_samples_stored` samples per input signature are kept
    tuned       -> calls whose signature has an engine, with shapes in the engine's range, run the engine

Signatures are keyed exactly as in JIT mode (`_samples.signature_key`), so a decision, a sample or a saved
engine means the same thing in both modes. Eager runs happen inside JIT mode's `Busy()`, so when JIT mode is
enabled as well it neither tracks nor tunes a wrapped module or anything under it.

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
from typing import Any

import torch
from torch.compiler import is_dynamo_compiling

from aitune.torch import _tree
from aitune.torch._checking import same_values
from aitune.torch._confirm import EngineRejected
from aitune.torch._errors import AITuneError
from aitune.torch._samples import InputNormalizer, Sample, SignatureRecord, signature_key
from aitune.torch.jit._runtime import Busy
from aitune.torch.jit._runtime import _local as _jit_local
from aitune.torch.jit._tracker import fingerprint
from aitune.torch.tune_strategy import CandidateResult, TuneStrategy

logger = logging.getLogger(__name__)

STATES = ("passthrough", "recording", "tuned")

_local = threading.local()
#: Bytes held by samples recorded through the explicit API, process-wide (bounded by `max_samples_bytes`).
_SAMPLE_BYTES = [0]
#: Every live runtime, for `ait.tune(func=...)`, which cannot reach wrappers from a plain function.
_LIVE: weakref.WeakSet[ModuleRuntime] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


class Quiet:
    """Context for aitune's own work (tuning, running an engine): wrappers pass calls straight to their module
    and JIT mode stays out (its `Busy`)."""

    def __enter__(self) -> None:
        self._prev = getattr(_local, "quiet", False)
        _local.quiet = True
        self._busy = Busy()
        self._busy.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._busy.__exit__(*exc)
        _local.quiet = self._prev


def quiet() -> bool:
    return getattr(_local, "quiet", False)


def _tracing() -> bool:
    return bool(torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting())


def _settings() -> Any:
    from aitune.torch.config import config

    return config


def live_runtimes() -> list[ModuleRuntime]:
    """Runtimes of the wrappers alive now, in creation order."""
    with _LIVE_LOCK:
        return sorted(_LIVE, key=lambda rt: rt.serial)


_serial = [0]


class ModuleRuntime:
    """State of one `ait.Module`: its signatures, samples and engines. See the module docstring for the states."""

    def __init__(self, module: torch.nn.Module, name: str, strategy: TuneStrategy | None = None,
                 strategies: Sequence[TuneStrategy | None] | Mapping[int, TuneStrategy | None] | None = None) -> None:
        if strategy is not None and not hasattr(strategy, "tune"):
            raise TypeError(f"ait.Module({name!r}): strategy must be a tune strategy such as "
                            f"HighestThroughputStrategy(), got {type(strategy).__name__}")
        self.name = name
        self.module = module
        self.normalizer = InputNormalizer(module.forward)
        self.signatures: dict[Any, SignatureRecord] = {}
        self.state = "passthrough"
        self.strategy = strategy
        self.strategies: dict[int, TuneStrategy | None] = (
            dict(strategies) if isinstance(strategies, Mapping) else dict(enumerate(strategies or ())))
        #: Calls seen while recording or tuned (passthrough calls are not counted: that path does no work).
        self.calls = 0
        self.lock = threading.RLock()
        #: `fingerprint(module)` when the engines were installed.
        self._weights: tuple[tuple[Any, ...], int] | None = None
        self._warned: set[str] = set()
        with _LIVE_LOCK:
            _serial[0] += 1
            self.serial = _serial[0]
            _LIVE.add(self)

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
                self._drop(sig)
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

    def install(self, sig: SignatureRecord, result: CandidateResult, eager_latency_ms: float | None, *,
                samples: Sequence[Sample] | None = None) -> None:
        """Serve `sig` with `result.engine` (an accepted candidate) from now on.

        The caller sets `sig.engine_range` beforehand, or passes the `samples` the engine was checked on; when
        neither, the signature's observed range is used. Releases nothing.
        """
        if result.engine is None:
            raise AITuneError(f"{self.name}: {result.backend} has no engine to install")
        if samples is not None:
            sig.freeze_engine_range(samples)
        elif sig.engine_range is None:
            sig.engine_range = ([list(s) for s in sig.min_shapes], [list(s) for s in sig.max_shapes])
        with self.lock:
            if self.signatures.get(sig.key) is not sig:
                self.signatures[sig.key] = sig
            sig.take_engine(result)
            sig.eager_latency_ms = eager_latency_ms
            self._weights = fingerprint(self.module)
            self.state = "tuned"

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
        module = self.module
        if quiet() or _tracing():
            return module(*args, **kwargs)
        if self.state == "passthrough" or module.training:
            # Training-mode calls are never recorded or routed.
            return self.eager(args, kwargs)
        try:
            named = self.normalizer.normalize(args, kwargs)
            key = signature_key(named)
            sig = self.signatures.get(key)
            if sig is None:
                with self.lock:
                    sig = self.signatures.get(key)
                    if sig is None:
                        sig = SignatureRecord.from_call(key, named)
                        self.signatures[key] = sig
                        if self.state == "tuned":
                            logger.info("%s: new input signature #%d; it runs eagerly until ait.tune records it "
                                        "(grad and inference mode, dtypes, devices and plain values are part of a "
                                        "signature)", self.name, len(self.signatures))
                        elif len(self.signatures) > 1:
                            logger.info("%s: new input signature #%d", self.name, len(self.signatures))
            shapes = _tree.shapes_of(named)
            with sig.lock:
                self.calls += 1
                sig.observe(shapes)
            if sig.status == "tuned" and sig.engine is not None:
                if sig.in_engine_range(shapes) and self._weights_current(sig):
                    return self._run_engine(sig, args, kwargs)
                if sig.engine is not None:  # not dropped by the weights check: out of range
                    sig.out_of_range_calls += 1
                    if sig.out_of_range_calls == 1:
                        logger.info("%s: shapes outside the tuned range, running eagerly", self.name)
                return self.eager(args, kwargs)
            record = self.state == "recording" and sig.status == "recording"
        except AITuneError:
            raise
        except Exception as e:
            if _settings().strict:
                raise
            self._warn_once(f"handling a call of {self.name}", e)
            return self.eager(args, kwargs)
        if record:
            return self._record(sig, args, kwargs)
        return self.eager(args, kwargs)

    def eager(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The wrapped module's own call, with its hooks, kept out of JIT mode (its `Busy`, inlined: this is the
        whole cost of a wrapper in passthrough)."""
        if is_dynamo_compiling():
            return self.module(*args, **kwargs)
        local = _jit_local
        prev = getattr(local, "busy", False)
        local.busy = True
        try:
            return self.module(*args, **kwargs)
        finally:
            local.busy = prev

    def _run_engine(self, sig: SignatureRecord, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        engine = sig.engine
        try:
            with Quiet():
                out = engine(*args, **kwargs)
            sig.engine_calls += 1
            return out
        except EngineRejected as e:
            # An engine from a checkpoint or the cache failed its live confirmation (logged there): this call
            # already has eager's result; the signature runs eagerly until ait.tune runs again.
            with self.lock:
                self._drop(sig)
                sig.status = "eager"
                sig.reason = f"dropped on a live call: {e}"[:500]
            self.settle()
            return e.output
        except Exception as e:
            if _settings().strict:
                raise
            self._warn_once(f"running the {sig.backend_description} engine of {self.name}", e)
            with self.lock:
                self._drop(sig)
                sig.status = "eager"
                sig.reason = f"engine failed at run time: {type(e).__name__}: {e}"[:300]
            self.settle()
        return self.eager(args, kwargs)

    def _record(self, sig: SignatureRecord, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        settings = _settings()
        inputs = None
        try:
            if len(sig.samples) < settings.max_num_samples_stored and _SAMPLE_BYTES[0] < settings.max_samples_bytes:
                inputs = _tree.clone((args, kwargs))
        except Exception as e:
            if settings.strict:
                raise
            self._warn_once(f"recording inputs of {self.name}", e)
        out = self.eager(args, kwargs)
        if inputs is None:
            return out
        try:
            outputs = _tree.clone(out)
            mutated = not same_values(inputs, (args, kwargs))
            after = _tree.clone((args, kwargs)) if mutated else None
            size = _tree.nbytes((inputs, outputs, after))
            if _SAMPLE_BYTES[0] + size > settings.max_samples_bytes:
                logger.info("%s: sample byte cap (%d bytes) reached; not storing more samples", self.name,
                            settings.max_samples_bytes)
            else:
                with sig.lock:
                    if sig.status == "recording" and len(sig.samples) < settings.max_num_samples_stored:
                        sig.samples.append(Sample(inputs[0], inputs[1], outputs, after, size))
                        _SAMPLE_BYTES[0] += size
        except Exception as e:
            if settings.strict:
                raise
            self._warn_once(f"recording {self.name}", e)
        return out

    # -- weights -----------------------------------------------------------------------------------------------

    def _weights_current(self, sig: SignatureRecord) -> bool:
        """For an engine holding a copy of the weights: are they still those it was built from? Else drop."""
        if not getattr(sig.engine, "bakes_weights", False) or self._weights is None:
            return True
        if fingerprint(self.module) == self._weights:
            return True
        self.invalidate("weights changed")
        return False

    def check_weights(self, what: str) -> None:
        """After a move, cast or reload: drop every engine if the weights are not those they were built from."""
        if self._weights is None or fingerprint(self.module) == self._weights:
            return
        self.invalidate(what)

    def invalidate(self, why: str) -> None:
        """Drop every engine (never serve a stale one); the module runs eagerly until it is tuned again."""
        with self.lock:
            dropped = [s for s in self.signatures.values() if s.engine is not None]
            for sig in self.signatures.values():
                self._drop(sig)
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

    @staticmethod
    def _drop(sig: SignatureRecord) -> None:
        engine = sig.engine
        sig.engine = None
        if engine is not None:
            try:
                engine.release()
            except Exception:
                logger.debug("releasing an engine failed", exc_info=True)

    def _warn_once(self, where: str, e: BaseException) -> None:
        key = f"{where}:{type(e).__name__}"
        if key not in self._warned:
            self._warned.add(key)
            text = str(e).splitlines()[0][:300] if str(e) else ""
            logger.warning("aitune: %s failed (%s: %s); running eagerly. Set AITUNE_STRICT=1 to raise instead.",
                           where, type(e).__name__, text)
        logger.debug("failure in %s", where, exc_info=True)

    def recorded(self) -> Iterator[SignatureRecord]:
        """Signatures waiting to be tuned: undecided, with samples."""
        return (s for s in list(self.signatures.values()) if s.status == "recording" and s.samples)

    def __repr__(self) -> str:
        return f"ModuleRuntime({self.name!r}, state={self.state!r}, signatures={len(self.signatures)})"


def release_samples(sig: SignatureRecord) -> None:
    with sig.lock:
        _SAMPLE_BYTES[0] = max(0, _SAMPLE_BYTES[0] - sum(s.nbytes for s in sig.samples))
        sig.samples.clear()
