"""Routing one call of a signature, THE fail-open policy, and THE re-entrancy guard.

Routing: a call whose signature is tuned and whose shapes lie in its engine's range runs the engine; a call of a
signature still recording is recorded; everything else runs eagerly (`choose`). `run_engine` runs the engine and,
when it fails, drops it and runs the call eagerly instead (the caller's result is never lost).

New sizes: an engine whose backend compiles sizes symbolically (`Backend.serves_new_sizes`) may serve sizes
outside its checked range along the dimensions that varied in it (a sequence growing token by token). The first
few such calls are confirmed (`run_confirming_size`): eager serves the call and the engine runs on copies of its
inputs; a match widens the range, a mismatch closes the engine to new sizes. Once enough have matched, new sizes
along those dimensions go straight to the engine.

The fail-open policy (`FAIL_OPEN`): a failure of aitune's own logic never breaks the user's call. It logs one
warning per place and error type, naming the setting that makes it raise (`AITUNE_STRICT=1`), and the call runs
eagerly; in strict mode the error is raised. Exceptions raised by the user's own forward are never caught.

The guard (`GUARD`, one per thread): while aitune runs its own work on a thread (tuning, checking, timing,
running an engine) every front passes module calls straight through (`own_work`); while an `ait.Module` runs its
module eagerly, JIT mode stays out of it (`wrapped`), so the two fronts never track the same calls.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Literal

import torch

from aitune.torch import _tree
from aitune.torch._samples import SignatureRecord
from aitune.torch._signature._confirm import EngineRejected, LiveCheck, shadow
from aitune.torch._signature._inplace import InPlaceCheck

logger = logging.getLogger(__name__)

Route = Literal["engine", "record", "eager", "confirm_size"]


class Guard(threading.local):
    """Per-thread flags read on every hooked call (plain attributes: the hot path reads them directly)."""

    #: aitune's own work runs on this thread: module calls pass straight through every front.
    own_work: bool = False
    #: an `ait.Module` is running its module eagerly on this thread: JIT mode does not track these calls.
    wrapped: bool = False


GUARD = Guard()


class OwnWork:
    """`with OwnWork():` marks aitune's own work on this thread (see `Guard.own_work`)."""

    __slots__ = ("_prev",)

    def __enter__(self) -> None:
        self._prev = GUARD.own_work
        GUARD.own_work = True

    def __exit__(self, *exc: object) -> None:
        GUARD.own_work = self._prev


def tracing() -> bool:
    """A compiler or tracer is running this call: it must see the module's own code, not aitune's."""
    return bool(torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting())


class FailOpen:
    """The fail-open policy (see the module docstring); remembers which warnings were given."""

    def __init__(self) -> None:
        self._warned: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def handle(self, where: str, error: BaseException, *, strict: bool) -> None:
        """Raise `error` in strict mode; else warn once for (`where`, its type). The caller then runs eagerly."""
        if strict:
            raise error
        key = (where, type(error).__name__)
        with self._lock:
            first = key not in self._warned
            self._warned.add(key)
        if first:
            text = str(error).splitlines()[0][:300] if str(error) else ""
            logger.warning("aitune: %s failed (%s: %s); running eagerly. Set AITUNE_STRICT=1 to raise instead.",
                           where, type(error).__name__, text)
        logger.debug("failure in %s", where, exc_info=error)

    def reset(self) -> None:
        with self._lock:
            self._warned.clear()


FAIL_OPEN = FailOpen()


def reset() -> None:
    """Forget the warnings given and the threads seen (for tests)."""
    FAIL_OPEN.reset()
    CALLERS.reset()


class CallerThreads:
    """The threads that have called tracked modules in this process (noted on every routed call: one set lookup).
    Once there are several, building engines with torch.export (process-wide patching) could reroute another
    thread's eager call, and a failure may come from the other thread rather than the module."""

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def note(self) -> None:
        ident = threading.get_ident()
        if ident not in self._seen:
            self._seen.add(ident)

    def several(self) -> bool:
        return len(self._seen) > 1

    def reset(self) -> None:
        self._seen = set()


CALLERS = CallerThreads()


def choose(sig: SignatureRecord, shapes: tuple[tuple[int, ...], ...], name: str,
           module: torch.nn.Module | None = None, on_revert: Callable[[str], None] | None = None) -> Route:
    """Where a call of `sig` of `module` with these tensor shapes goes. `on_revert(reason)` is called when the
    in-place check (`_inplace`) drops the signature's engine, after the signature was left eager."""
    CALLERS.note()
    status = sig.status
    if status == "tuned" and sig.watch is not None and module is not None:
        changed = sig.watch.changed(module)
        if changed is not None:
            _watched_value_changed(sig, name, changed)
            status = sig.status
    if status == "tuned":
        if sig.graph_thread is not None and sig.engine is not None and threading.get_ident() != sig.graph_thread:
            _other_thread(sig, name)
            return "eager"
        if sig.engine is not None and sig.in_engine_range(shapes):
            check = sig.inplace
            if check is None or check.verdict != "running" or isinstance(sig.engine, LiveCheck):
                return "engine"
            return _in_place_step(sig, check, name, on_revert)
        if sig.engine is not None and sig.fits_open_dims(shapes) and not isinstance(sig.engine, LiveCheck):
            if sig.size_checks_left > 0:
                return "confirm_size"
            with sig.lock:
                sig.widen_engine_range(shapes)
            return "engine"
        sig.count_out_of_range(name)
        return "eager"
    return "record" if status == "recording" else "eager"


def _other_thread(sig: SignatureRecord, name: str) -> None:
    sig.other_thread_calls += 1
    if sig.other_thread_calls == 1:
        logger.info("%s: its %s engine replays CUDA graphs, which serve only the thread that captured them; calls "
                    "from other threads run eagerly", name, sig.backend_description or "")


def _in_place_step(sig: SignatureRecord, check: InPlaceCheck, name: str,
                   on_revert: Callable[[str], None] | None) -> Route:
    """One call of the in-place check: engine or eager by its turn; at its end, keep the engine or drop it."""
    with sig.lock:
        if sig.inplace is not check:
            return "engine" if sig.engine is not None else "eager"
        step = check.route()
        if step != "done":
            return step
        if check.verdict != "reverted":
            if check.verdict == "kept":
                logger.info("%s: in place the %s engine is faster too (%.3f ms vs %.3f ms eager between calls)",
                            name, sig.backend_description or "", check.engine_ms, check.eager_ms)
            return "engine"
        description = sig.backend_description or sig.backend or "its"
        reason = f"the {description} engine was dropped: {check.why}"
        drop_engine(sig)
        sig.status = "eager"
        sig.reason = reason[:500]
    logger.info("%s: %s; it runs eagerly", name, reason)
    if on_revert is not None:
        on_revert(reason)
    return "eager"


def _watched_value_changed(sig: SignatureRecord, name: str, what: str) -> None:
    """A Python value the engine baked in changed (a plain attribute set by the script): like a weight change,
    the engine is dropped and the signature records afresh; the second time, only backends that run the
    module's Python are tried for it, so a value that changes on every call does not cost a tuning each time."""
    with sig.lock:
        if sig.status != "tuned" or sig.watch is None:
            return
        drop_engine(sig)
        sig.watch = None
        sig.status = "recording"
        sig.calls = 0
        sig.watch_changes += 1
        if sig.watch_changes >= 2:
            sig.python_only = (f"Python values its engine would bake in keep changing ({what}); only engines that "
                               "run its Python are tried")
    if sig.watch_changes == 1:
        logger.info("%s: %s, which its engine baked in; dropping the engine and re-recording", name, what)
    elif sig.watch_changes == 2:
        logger.info("%s: %s again; from now on only engines that run its Python are tried for it", name, what)


def drop_engine(sig: SignatureRecord) -> None:
    """Release the signature's engine (it never serves again)."""
    engine = sig.engine
    sig.engine = None
    if engine is not None:
        try:
            engine.release()
        except Exception:  # releasing is best effort: the engine is unreachable either way
            logger.debug("releasing an engine failed", exc_info=True)


def run_engine(sig: SignatureRecord, args: tuple[Any, ...], kwargs: dict[str, Any], eager: Callable[[], Any], *,
               name: str, strict: bool) -> Any:
    """The call served by the signature's engine. If the engine fails, it is dropped (the signature then stays
    eager) and `eager()` serves the call; if it fails its live confirmation, the signature records afresh and
    the call keeps the eager result the confirmation computed."""
    engine = sig.engine
    try:
        if isinstance(engine, LiveCheck):
            out = engine.confirm(eager, args, kwargs, OwnWork)
        else:
            with OwnWork():
                out = engine(*args, **kwargs)
        sig.engine_calls += 1
        return out
    except EngineRejected as e:
        with sig.lock:
            if sig.engine is engine:
                drop_engine(sig)
                sig.status = "recording"
                sig.calls = 0
                sig.cache = "rejected"
                sig.reason = f"dropped on a live call: {e}"[:500]
        return e.output
    except Exception as e:  # the engine failed: the fail-open policy, then eager serves this call
        FAIL_OPEN.handle(f"running the {sig.backend_description} engine of {name}", e, strict=strict)
        with sig.lock:
            if sig.engine is engine:
                drop_engine(sig)
                sig.status = "eager"
                sig.reason = f"engine failed at run time: {type(e).__name__}: {e}"[:300]
    return eager()


def run_confirming_size(sig: SignatureRecord, shapes: tuple[tuple[int, ...], ...], args: tuple[Any, ...],
                        kwargs: dict[str, Any], eager: Callable[[], Any], *, name: str, strict: bool) -> Any:
    """A call at a size the engine has not been checked on (see the module docstring): eager serves it, the engine
    runs on copies of its inputs, and the outcome opens or closes the engine to new sizes."""
    engine = sig.engine
    try:
        copies = _tree.clone((args, kwargs))
    except Exception:  # inputs aitune cannot copy: no confirmation possible, the engine keeps its checked range
        logger.debug("%s: cannot copy the inputs to confirm a new size", name, exc_info=True)
        sig.close_sizes()
        return eager()
    # An engine that cannot take this size keeps serving the range it was checked on (strict mode raises).
    out, why = shadow(engine, eager, args, kwargs, copies, sig.size_tolerances or {}, OwnWork, raise_errors=strict)
    with sig.lock:
        if sig.engine is not engine:
            return out
        if why is not None:
            sig.close_sizes()
            logger.info("%s: the %s engine serves only the sizes it was tuned on: at new sizes %s", name,
                        sig.backend_description or "", why)
            return out
        sig.widen_engine_range(shapes)
        sig.size_checks_left -= 1
        if sig.size_checks_left == 0:
            logger.info("%s: the %s engine matched eager at new sizes; it serves new sizes along %s from now on",
                        name, sig.backend_description or "", _describe_dims(sig))
    return out


def _describe_dims(sig: SignatureRecord) -> str:
    parts = [f"{desc['name']} dim {', '.join(map(str, dims))}"
             for desc, dims in zip(sig.description, sig.open_dims or []) if dims]
    return "; ".join(parts) or "no dimension"
