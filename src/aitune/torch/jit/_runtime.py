"""The slow path of the patched __call__: discovery, recording, routing to engines, and the tune trigger.

Everything here is wrapped so that a failure of aitune's own logic logs one warning and the call runs eagerly
(or raises, in strict mode). Exceptions raised by the user's own forward are never caught.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch

from aitune.torch import _tree
from aitune.torch._checking import same_values
from aitune.torch._confirm import EngineRejected
from aitune.torch._errors import AITuneError
from aitune.torch._samples import Sample, SignatureRecord, signature_key
from aitune.torch.jit import _tracker
from aitune.torch.jit._settings import SETTINGS
from aitune.torch.jit._tracker import LOCK, ModuleState

logger = logging.getLogger(__name__)

_original_call = torch.nn.Module._wrapped_call_impl
_local = threading.local()
_warned: set[tuple[str, str]] = set()
#: Bumped whenever module weights may have been replaced or moved (load_state_dict, .to(), assignment...).
EPOCH = [0]


def busy() -> bool:
    """True while this thread runs aitune's own tuning or an engine: module calls then pass through."""
    return getattr(_local, "busy", False)


class Busy:
    """Context in which module calls on this thread go straight to the original __call__."""

    def __enter__(self) -> None:
        self._prev = getattr(_local, "busy", False)
        _local.busy = True

    def __exit__(self, *exc: object) -> None:
        _local.busy = self._prev


def warn_once(where: str, e: BaseException) -> None:
    key = (where, type(e).__name__)
    if key not in _warned:
        _warned.add(key)
        logger.warning("aitune: %s failed (%s: %s); running eagerly. Set AITUNE_STRICT=1 to raise instead.",
                       where, type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "")
    logger.debug("hook failure in %s", where, exc_info=True)


def _tracing() -> bool:
    return bool(torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting())


def handle_call(module: torch.nn.Module, st: ModuleState | None, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
    if busy() or _tracing():
        return _original_call(module, *args, **kwargs)
    try:
        if st is None:
            st = _tracker.discover(module, SETTINGS)
        if st.passthrough:
            return _original_call(module, *args, **kwargs)
        if st.status != "active":
            # Decided before its first tracked call (skipped, too small): run once on the call stack so its
            # children are discovered under it, then pass through for good.
            try:
                return _call_tracked(st, module, args, kwargs)
            finally:
                st.passthrough = True
        if module.training:
            # Training-mode calls are never recorded or routed; they run exactly as without aitune.
            return _call_tracked(st, module, args, kwargs)
        _check_weights(st, module)
        named = st.normalizer.normalize(args, kwargs) if st.normalizer is not None else ()
        key = signature_key(named)
        sig = st.signatures.get(key)
        if sig is None:
            with LOCK:
                sig = st.signatures.get(key)
                if sig is None:
                    sig = SignatureRecord.from_call(key, named)
                    st.signatures[key] = sig
                    if len(st.signatures) > 1:
                        logger.info("%s: new input signature #%d", st.name, len(st.signatures))
        shapes = _tree.shapes_of(named)
        with sig.lock:
            st.calls += 1  # under a lock: several threads may call the same module
            sig.observe(shapes)
        status = sig.status
        if status == "tuned":
            if sig.engine is not None and sig.in_engine_range(shapes):
                return _run_engine(st, sig, module, args, kwargs)
            sig.out_of_range_calls += 1
            if sig.out_of_range_calls == 1:
                logger.info("%s: shapes outside the tuned range, running eagerly", st.name)
            return _call_tracked(st, module, args, kwargs)
        if status != "recording":
            return _call_tracked(st, module, args, kwargs)
    except AITuneError:
        raise
    except Exception as e:
        if SETTINGS.strict:
            raise
        warn_once(f"handling a call of {type(module).__name__}", e)
        return _original_call(module, *args, **kwargs)
    return _record_call(st, sig, module, args, kwargs)


def _call_tracked(st: ModuleState, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run eagerly with this module on the thread's call stack, so its children find their parent."""
    stack = _tracker.call_stack()
    stack.append(st)
    try:
        return _original_call(module, *args, **kwargs)
    finally:
        stack.pop()


def _run_engine(st: ModuleState, sig: SignatureRecord, module: torch.nn.Module, args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> Any:
    engine = sig.engine
    try:
        with Busy():
            out = engine(*args, **kwargs)
        sig.engine_calls += 1
        return out
    except EngineRejected as e:
        # An engine from the cache failed its live confirmation (logged there, entry forgotten): this call already
        # has eager's result; the signature is recorded and tuned afresh.
        with LOCK:
            _tracker.drop_engine(sig)
            _tracker.release_samples(sig)
            sig.status = "recording"
            sig.calls = 0
            sig.cache = "rejected"
        return e.output
    except Exception as e:
        if SETTINGS.strict:
            raise
        warn_once(f"running the {sig.backend_description} engine of {st.name}", e)
        with LOCK:
            _tracker.drop_engine(sig)
            sig.status = "eager"
            sig.reason = f"engine failed at run time: {type(e).__name__}: {e}"[:300]
        return _call_tracked(st, module, args, kwargs)


def _record_call(st: ModuleState, sig: SignatureRecord, module: torch.nn.Module, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Any:
    inputs = None
    try:
        store = (len(sig.samples) < SETTINGS.max_num_samples_stored
                 and _tracker.SAMPLE_BYTES[0] < SETTINGS.max_samples_bytes)
        if store:
            inputs = _tree.clone((args, kwargs))
    except Exception as e:
        if SETTINGS.strict:
            raise
        warn_once(f"recording inputs of {st.name}", e)
    out = _call_tracked(st, module, args, kwargs)
    if inputs is None:
        return out
    try:
        outputs = _tree.clone(out)
        mutated = not same_values(inputs, (args, kwargs))
        after = _tree.clone((args, kwargs)) if mutated else None
        size = _tree.nbytes((inputs, outputs, after))
        if _tracker.SAMPLE_BYTES[0] + size > SETTINGS.max_samples_bytes:
            logger.info("%s: sample byte cap (%d bytes) reached; not storing more samples", st.name,
                        SETTINGS.max_samples_bytes)
        else:
            sample = Sample(inputs[0], inputs[1], outputs, after, size)
            with sig.lock:
                if sig.status == "recording" and len(sig.samples) < SETTINGS.max_num_samples_stored:
                    sig.samples.append(sample)
                    _tracker.SAMPLE_BYTES[0] += size
        if SETTINGS.tune_eagerly and sig.calls >= SETTINGS.min_samples and sig.samples:
            from aitune.torch.jit import _tuner

            _tuner.tune_signature(st, sig)
    except AITuneError:
        raise
    except Exception as e:
        if SETTINGS.strict:
            raise
        warn_once(f"recording {st.name}", e)
    return out


def _check_weights(st: ModuleState, module: torch.nn.Module) -> None:
    """Drop engines and samples that no longer match the module's weights."""
    if st.epoch == EPOCH[0] and not _has_baked_engine(st) and not _recording(st):
        return
    ids, versions = _tracker.fingerprint(module)
    st.epoch = EPOCH[0]
    if st.param_ids is None:
        st.param_ids, st.version_sum = ids, versions
        return
    moved = ids != st.param_ids
    changed = versions != st.version_sum
    if not moved and not changed:
        return
    st.param_ids, st.version_sum = ids, versions
    with LOCK:
        if not moved and any(s.engine is not None and s.engine.bakes_weights and s.status != "tuning"
                             for s in st.signatures.values()):
            st.baked_invalidations += 1
            if st.baked_invalidations == _tracker.LIVE_WEIGHTS_AFTER:
                logger.info("%s: its weights keep changing in place; from now on only backends that read the live "
                            "weights are tried for it", st.name)
        for sig in st.signatures.values():
            if sig.status == "tuning":
                continue
            stale_engine = sig.engine is not None and (moved or sig.engine.bakes_weights)
            if stale_engine or (sig.status == "recording" and sig.samples):
                what = "replaced or moved" if moved else "changed in place"
                logger.info("%s: weights %s; %s", st.name, what,
                            "dropping its engine and re-recording" if stale_engine else "re-recording samples")
                _tracker.drop_engine(sig)
                _tracker.release_samples(sig)
                sig.status = "recording"
                sig.calls = 0
                sig.backend = None


def _has_baked_engine(st: ModuleState) -> bool:
    return any(s.engine is not None and s.engine.bakes_weights for s in st.signatures.values())


def _recording(st: ModuleState) -> bool:
    return any(s.status == "recording" and s.samples for s in st.signatures.values())
