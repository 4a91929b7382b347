"""The slow path of the patched __call__ in JIT mode: discovery, the weights check, and one signature's route.

`make_handler(tune)` builds the function the hook calls for a module that is not passing straight through. Per
call: discover the module (`_tracker`), drop engines and samples that no longer match its weights, look its
signature up, then route the call through the shared signature runtime (`aitune.torch._signature`): its engine,
a recorded eager call (which calls `tune(state, signature)` once enough calls were recorded), or eager. While
background tuning times a candidate, a call waits for that slice first (`_signature._background.Quiet`). Failures
of aitune's own logic follow the shared fail-open policy: the call runs eagerly (strict mode raises).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from aitune.torch._errors import AITuneError
from aitune.torch._fingerprint import live_weights, weights_state
from aitune.torch._samples import SignatureRecord
from aitune.torch._signature._background import QUIET
from aitune.torch._signature._hooks import (
    HOOKS,
    blocked_by,
    call_with_hooks,
    hooked_submodule,
    inert_library_hooks_below,
    library_collecting,
    own_forward_hooks,
)
from aitune.torch._signature._record import BUDGET, record_call, release_samples
from aitune.torch._signature._route import (
    FAIL_OPEN,
    GUARD,
    choose,
    drop_engine,
    run_confirming_size,
    run_engine,
    tracing,
)
from aitune.torch._signature._weights import DATA_ACCESSES
from aitune.torch.jit import _tracker
from aitune.torch.jit._tracker import EPOCH, LOCK, ModuleState
from aitune.torch.jit.config import SETTINGS

logger = logging.getLogger(__name__)

_original_call = torch.nn.Module._wrapped_call_impl
Tune = Callable[[ModuleState, SignatureRecord], None]


def make_handler(tune: Tune) -> Callable[[torch.nn.Module, ModuleState | None, tuple[Any, ...], dict[str, Any]],
                                         Any]:
    """The hook's slow path; `tune(state, signature)` is called when a signature has recorded enough calls."""

    def handle_call(module: torch.nn.Module, st: ModuleState | None, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        if QUIET.active and QUIET.enter():  # background tuning is timing: wait for its slice to end
            try:
                return handle(module, st, args, kwargs)
            finally:
                QUIET.leave()
        return handle(module, st, args, kwargs)

    def handle(module: torch.nn.Module, st: ModuleState | None, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> Any:
        if GUARD.own_work or GUARD.wrapped or tracing():
            return _original_call(module, *args, **kwargs)
        try:
            if st is None:
                st = _tracker.discover(module, SETTINGS)
            if st.passthrough:
                return _original_call(module, *args, **kwargs)
            table = st.table
            if st.status != "active" or table is None:
                # Decided before its first tracked call (skipped, too small): run once on the call stack so its
                # children are discovered under it, then pass through for good.
                try:
                    return _call_tracked(st, module, args, kwargs)
                finally:
                    st.passthrough = True
            if module.training:
                # Training-mode calls are never recorded or routed; they run exactly as without aitune.
                _tell(st, "training", f"{st.name} is in training mode: aitune tunes eval-mode calls; call "
                                      "model.eval() for inference")
                return _call_tracked(st, module, args, kwargs)
            blocked = blocked_by(module)
            if blocked is not None:
                # Hooks no engine can honour: the call runs as without aitune, torch running the hooks.
                _tell(st, "hooks", f"{st.name}: runs eagerly: {blocked}")
                return _call_tracked(st, module, args, kwargs)
            _check_weights(st, module)
            if st.hook_epoch != HOOKS.value:
                _check_hooks_below(st, module)
            if st.library_hooks and library_collecting():
                # A library collects outputs through hooks below (transformers' hidden states of an enclosing
                # model): they must fire, so this call runs as without aitune.
                return _call_tracked(st, module, args, kwargs)
            hooked = own_forward_hooks(module)
        except AITuneError:
            raise
        except Exception as e:  # aitune's own logic failed (not the user's forward): the fail-open policy
            FAIL_OPEN.handle(f"handling a call of {type(module).__name__}", e, strict=SETTINGS.strict)
            return _original_call(module, *args, **kwargs)
        if hooked:
            # Its own hooks run here, once; what they hand on is what is keyed, recorded and served.
            return call_with_hooks(module, lambda a, k: route_call(st, module, a, k, hooked=True), args, kwargs)
        return route_call(st, module, args, kwargs, hooked=False)

    def route_call(st: ModuleState, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], *,
                   hooked: bool) -> Any:
        table = st.table
        assert table is not None
        try:
            sig, shapes = table.lookup(args, kwargs, st.name)
            route = choose(sig, shapes, st.name, module, on_revert=lambda why: _reverted_in_place(st, why))
        except AITuneError:
            raise
        except Exception as e:  # aitune's own logic failed (not the user's forward): the fail-open policy
            FAIL_OPEN.handle(f"handling a call of {type(module).__name__}", e, strict=SETTINGS.strict)
            return _call_tracked(st, module, args, kwargs, forward_only=hooked)

        def eager() -> Any:
            return _call_tracked(st, module, args, kwargs, forward_only=hooked)

        if route == "engine":
            return run_engine(sig, args, kwargs, eager, name=st.name, strict=SETTINGS.strict)
        if route == "confirm_size":
            return run_confirming_size(sig, shapes, args, kwargs, eager, name=st.name, strict=SETTINGS.strict)
        if route == "eager":
            probe = sig.eager_probe  # background tuning takes its eager latency from this call
            return eager() if probe is None else probe.run(eager)
        strict = SETTINGS.strict
        waiting = SETTINGS.batch_axis_required and SETTINGS.min_samples > 1
        if waiting:
            _make_room_for_new_sizes(sig, shapes)
        out = record_call(sig, args, kwargs, eager, name=st.name, module=module, shapes=shapes,
                          max_samples=SETTINGS.max_num_samples_stored,
                          max_bytes=SETTINGS.max_samples_bytes,
                          fail_open=lambda where, e: FAIL_OPEN.handle(where, e, strict=strict))
        varied = not waiting or len({sample.shapes for sample in sig.samples}) > 1
        if SETTINGS.tune_eagerly and sig.calls >= SETTINGS.min_samples and sig.samples and varied:
            try:
                tune(st, sig)
            except AITuneError:
                raise
            except Exception as e:  # tuning is aitune's own work: the fail-open policy, the call keeps its result
                FAIL_OPEN.handle(f"tuning {st.name}", e, strict=strict)
        return out

    return handle_call


def _make_room_for_new_sizes(sig: SignatureRecord, shapes: tuple[tuple[int, ...], ...]) -> None:
    """`batch_axis_required`: the samples are full of one size and this call brings another; drop the newest
    sample so this call is kept, and the engine is built over both sizes."""
    seen = {s.shapes for s in sig.samples}
    full = len(sig.samples) >= SETTINGS.max_num_samples_stored
    if full and len(seen) == 1 and shapes not in seen:
        with sig.lock:
            dropped = sig.samples.pop()
        BUDGET.give_back(dropped.nbytes)


def _call_tracked(st: ModuleState, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], *,
                  forward_only: bool = False) -> Any:
    """Run eagerly with this module on the thread's call stack, so its children find their parent; its forward
    alone when its hooks are being run by `call_with_hooks` around this call."""
    stack = _tracker.call_stack()
    stack.append(st)
    try:
        if forward_only:
            return module.forward(*args, **kwargs)
        return _original_call(module, *args, **kwargs)
    finally:
        stack.pop()


def _reverted_in_place(st: ModuleState, reason: str) -> None:
    """The in-place check dropped an engine of the module: with no other engine left, it is a module that could
    not be made faster, and its children are tried."""
    with LOCK:
        if st.status != "active" or any(s.status == "tuned" for s in st.signatures.values()):
            return
        _tracker.reopen_descendants(st)
        _tracker.give_up(st, "eager", reason, SETTINGS)
        children = [c.name for c in st.children if c.status == "active"]
    if children:
        logger.info("%s: trying its children instead: %s", st.name, ", ".join(children))


def _tell(st: ModuleState, what: str, message: str) -> None:
    """One INFO line per module and condition, and the reason the report gives while nothing is tuned."""
    if what not in st.told:
        st.told.add(what)
        logger.info("%s", message)
    if not any(s.status == "tuned" for s in st.signatures.values()):
        st.reason = message


def _check_hooks_below(st: ModuleState, module: torch.nn.Module) -> None:
    """A hook registered on a submodule: an engine fusing that submodule would skip it, so the module gives its
    engines up and its children are tried instead (they run their own hooks)."""
    st.hook_epoch = HOOKS.value
    st.library_hooks = inert_library_hooks_below(module)
    below = hooked_submodule(module, inert_too=False)
    if below is None or not any(s.engine is not None or s.samples for s in st.signatures.values()):
        return
    reason = (f"its submodule {below} has hooks, which an engine fusing it would skip; its children are tried "
              "instead")
    logger.info("%s: %s", st.name, reason)
    with LOCK:
        _tracker.reopen_descendants(st)
        _tracker.give_up(st, "eager", reason, SETTINGS)


def _check_weights(st: ModuleState, module: torch.nn.Module) -> None:
    """Drop engines and samples that no longer match the module's weights.

    Under an engine holding its own copy of the weights this runs on every call, so its common case is cheap:
    with no registration, move or reload since the last look (`EPOCH`) and no `Parameter.data` access, the
    tensors are those it saw, and the sum of their version counters tells whether one was written in place."""
    if st.epoch == EPOCH.value and not _recording(st):
        if not _has_baked_engine(st):
            # An engine bound to the weights' memory needs a look only after a `Parameter.data` access.
            if st.data_accesses == DATA_ACCESSES.value or not _has_bound_engine(st):
                return
        tensors = st.weight_tensors
        if tensors is not None and st.data_accesses == DATA_ACCESSES.value and \
                sum(t._version for t in tensors) == st.version_sum:
            return
    ids, versions = weights_state(module)
    st.epoch = EPOCH.value
    if st.param_ids is None:
        _remember_weights(st, module, ids, versions)
        return
    moved = ids != st.param_ids
    changed = versions != st.version_sum
    if not moved and not changed:
        baseline = st.weights_baseline
        if baseline is None or not _has_baked_engine(st) or not baseline.changed(module):
            _remember_weights(st, module, ids, versions)
            return
        changed = True  # written through Parameter.data: no version counter moved
    _remember_weights(st, module, ids, versions)
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
            if stale_engine or (sig.status in ("recording", "queued") and sig.samples):
                what = "weights replaced or moved" if moved else "weights changed in place"
                times = st.repeats[what] = st.repeats.get(what, 0) + 1
                if times == 1:
                    logger.info("%s: %s; %s", st.name, what,
                                "dropping its engine and re-recording" if stale_engine else "re-recording samples")
                elif times == 2:
                    logger.info("%s: %s again; from now on this is counted in the summary, not logged", st.name,
                                what)
                drop_engine(sig)
                release_samples(sig)
                sig.status = "recording"
                sig.calls = 0
                sig.backend = None


def _remember_weights(st: ModuleState, module: torch.nn.Module, ids: tuple[Any, ...], versions: int) -> None:
    st.param_ids, st.version_sum = ids, versions
    st.weight_tensors = list(live_weights(module))
    st.data_accesses = DATA_ACCESSES.value


def _has_baked_engine(st: ModuleState) -> bool:
    return any(s.engine is not None and s.engine.bakes_weights for s in st.signatures.values())


def _has_bound_engine(st: ModuleState) -> bool:
    return any(s.engine is not None and s.engine.binds_weight_storage for s in st.signatures.values())


def _recording(st: ModuleState) -> bool:
    return any(s.status in ("recording", "queued") and s.samples for s in st.signatures.values())
