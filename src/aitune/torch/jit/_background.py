"""Background tuning (`jit_config.background`): one aitune worker thread tunes while the script keeps serving.

The call that completes a signature's recording queues it (`queued`) and returns with its eager result; so do
that module's later calls, until the worker has decided. Exactly one worker runs (torch.compile is not safe to
run from two threads at once), taking the outermost queued module first, so the top-down walk is kept: a tuned
module's descendants are detached before they would be tried, a module that stays eager hands over to its
children, which queue in turn. The decision is committed as in blocking mode (`_signature._decide.commit`):
the engine is set before the signature says `tuned`, so a call is served entirely by eager or entirely by the
engine. While the worker runs, Python's thread switch interval is lowered (5 ms to 0.5 ms), so the serving
thread waits less for the interpreter lock through Dynamo's and Inductor's long stretches of Python.

Known limits of this first version: CUDA-graph candidates are not tried in the background (a CUDA graph serves
only the thread that captured it, and capturing it in the serving thread at the switch is not done yet);
candidates are timed in the worker while the script runs, so their figures include its interference, and the
in-place check (`_signature._inplace`) then compares the winner with eager in the serving thread, reverting it
where it is not faster; on torch 2.11, Inductor settings that aitune patches for a build apply process-wide for
that moment. At interpreter exit the queue is dropped and a tuning under way is abandoned (the worker is a
daemon thread; the persistent cache publishes only complete entries).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

#: The switch interval while the worker runs (seconds).
SWITCH_INTERVAL_S = 0.0005

Job = tuple[Any, Any]  # (ModuleState, SignatureRecord)


class Worker:
    """The one worker thread and its queue."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: list[Job] = []
        self._busy = False
        self._thread: threading.Thread | None = None
        self._run: Callable[[Any, Any], None] | None = None
        self._stopping = False
        self._saved_interval: float | None = None

    def in_worker(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, st: Any, sig: Any, run: Callable[[Any, Any], None]) -> bool:
        """Queue `sig` of `st` (status recording -> queued); False when it was not recording any more."""
        with sig.lock:
            if sig.status != "recording" or not sig.samples:
                return False
            sig.status = "queued"
        with self._cond:
            if self._stopping:
                with sig.lock:
                    sig.status = "recording"
                return False
            self._run = run
            self._queue.append((st, sig))
            if self._thread is None or not self._thread.is_alive():
                guard_fx_patches()
                self._thread = threading.Thread(target=self._loop, name="aitune-tuning", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        logger.info("%s: queued for tuning in the background; its calls run eagerly until it is decided", st.name)
        return True

    def _next(self) -> Job | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._idle()
                self._cond.wait()
            if self._stopping:
                return None
            self._queue.sort(key=lambda job: job[0].depth)
            self._busy = True
            if self._saved_interval is None:
                self._saved_interval = sys.getswitchinterval()
                sys.setswitchinterval(min(self._saved_interval, SWITCH_INTERVAL_S))
            return self._queue.pop(0)

    def _idle(self) -> None:
        """Nothing queued: back to the normal switch interval, and wake whoever waits (caller holds the lock)."""
        if self._saved_interval is not None:
            sys.setswitchinterval(self._saved_interval)
            self._saved_interval = None
        self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            st, sig = job
            try:
                run = self._run  # decide() claims the queued signature
                if run is not None:
                    run(st, sig)
            except Exception as e:  # the worker never dies of one module: it stays eager, with the reason
                logger.warning("%s: background tuning failed (%s: %s); it runs eagerly", st.name,
                               type(e).__name__, str(e)[:300])
                with sig.lock:
                    if sig.status in ("queued", "recording", "tuning"):
                        sig.status = "eager"
                        sig.reason = f"background tuning failed: {type(e).__name__}: {e}"[:500]
            finally:
                with self._cond:
                    self._busy = False
                    if not self._queue:
                        self._idle()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or being tuned (True), or `timeout` seconds passed (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def stop(self) -> None:
        """Drop the queue (its signatures run eagerly) and let the worker end after its current tuning."""
        with self._cond:
            self._stopping = True
            dropped, self._queue = self._queue, []
            self._cond.notify_all()
        for _, sig in dropped:
            with sig.lock:
                if sig.status == "queued":
                    sig.status = "eager"
                    sig.reason = "background tuning stopped before it was tuned"

    def restart(self) -> None:
        """After `stop` (tests, disable then enable): accept work again."""
        with self._cond:
            self._stopping = False


WORKER = Worker()

_fx_guarded: list[bool] = []


def guard_fx_patches() -> None:
    """Make torch.fx's temporary patches apply to the thread that made them only (idempotent).

    While it traces (symbolic tracing, make_fx inside AOTAutograd and Inductor's passes), torch.fx replaces
    `torch.nn.Module.__call__` and some functions process-wide, so a module called meanwhile from another thread
    runs into the tracer ("module is not installed as a submodule"): the script's own calls crashed on the first
    run of this mode. The replacement aitune installs (over `torch.fx._symbolic_trace._Patcher`, a private part
    of torch, checked to exist) forwards a call from any other thread to what was there before. Installed only
    when background tuning starts."""
    if _fx_guarded:
        return
    from torch.fx import _symbolic_trace as fx_trace

    patcher = getattr(fx_trace, "_Patcher", None)
    if patcher is None or not hasattr(patcher, "patch") or not hasattr(patcher, "patch_method"):
        raise RuntimeError("this torch has no torch.fx._symbolic_trace._Patcher to make thread-safe")
    plain_patch, plain_patch_method = patcher.patch, patcher.patch_method

    def own_thread_only(new_fn: Callable[..., Any], before: Any) -> Callable[..., Any]:
        owner = threading.get_ident()

        def guarded(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == owner or before is None:
                return new_fn(*args, **kwargs)
            return before(*args, **kwargs)

        guarded.__wrapped__ = new_fn  # type: ignore[attr-defined]
        return guarded

    def patch(self: Any, frame_dict: dict[str, Any], name: str, new_fn: Callable[..., Any],
              deduplicate: bool = True) -> None:
        import builtins

        before = frame_dict[name] if name in frame_dict else getattr(builtins, name, None)
        if getattr(before, "__fx_already_patched", False):
            return plain_patch(self, frame_dict, name, new_fn, deduplicate)
        return plain_patch(self, frame_dict, name, own_thread_only(new_fn, before), deduplicate)

    def patch_method(self: Any, cls: type, name: str, new_fn: Callable[..., Any], deduplicate: bool = True) -> None:
        before = getattr(cls, name)
        if getattr(before, "__fx_already_patched", False):
            return plain_patch_method(self, cls, name, new_fn, deduplicate)
        return plain_patch_method(self, cls, name, own_thread_only(new_fn, before), deduplicate)

    patcher.patch, patcher.patch_method = patch, patch_method
    _fx_guarded.append(True)


def wait(timeout: float | None = None) -> bool:
    """Wait for background tuning to finish: True once nothing is queued or being tuned, False after `timeout`
    seconds. Returns at once when background tuning is off."""
    return WORKER.wait(timeout)
