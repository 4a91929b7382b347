"""Background tuning (`jit_config.background`): one aitune worker thread tunes while the script keeps serving.

The call that completes a signature's recording queues it (`queued`) and returns with its eager result; so do
that module's later calls, until the worker has decided. Exactly one worker runs (torch.compile is not safe to
run from two threads at once), taking the outermost queued module first, so JIT mode's top-down walk is kept: a
tuned module's descendants are detached before they would be tried, a module that stays eager hands over to its
children, which queue in turn. The explicit API queues its wrappers' signatures the same way
(`ait.tune(..., background=True)`). The decision is committed as in blocking mode (`_signature._decide.commit`):
the engine is set before the signature says `tuned`, so a call is served entirely by eager or entirely by the
engine. While the worker runs, Python's thread switch interval is lowered (5 ms to 0.5 ms), so the serving
thread waits less for the interpreter lock through Dynamo's and Inductor's long stretches of Python.

How candidates are timed, so that the script's concurrent work does not decide the winner (`Quiet`):
- each measured call of a candidate runs in a slice during which the script's calls of tracked modules are held
  off: the slice starts once the calls in flight have returned (and the device is synchronized), and a script
  call that arrives meanwhile waits for the slice, at most one candidate call; slices and calls alternate;
- the eager latency is taken from the script's own calls of that signature, in place (`eager_in_place`): the
  worker waits while the next few calls run eagerly, each synchronized before and after; a script that does not
  call within a second gets it timed by the worker, in slices like the candidates;
- the report's `timing` says how each signature's figures were taken; the in-place check
  (`_signature._inplace`) then compares the winner with eager on the script's calls, after the switch.

CUDA graphs: a CUDA graph must be captured where it will replay, and capturing one while another thread
synchronizes the device breaks the capture, so the worker neither captures nor times one. A winner whose call is
static (a whole-graph torch.compile function for one size) is installed in a wrapper that captures its graph on
the serving thread's own calls (`backend._graphs.GraphAtSwitch`).

At interpreter exit the queue is dropped, and the tuning under way is abandoned at its next step (before a
candidate is built, checked or timed: `_timing.checkpoint`), its signature left eager with that reason; a build
already running is waited for up to EXIT_WAIT_S (one in four runs of a short GPU script that exited mid-compile
ended in a segmentation fault of the torn-down interpreter), and a build that fails meanwhile (the interpreter
refuses new thread pools once it is shutting down) is part of the abandonment, not a failure of its backend.
Past that wait the worker is left behind (a daemon thread; the persistent cache publishes only complete entries).

Known limits: on torch 2.11, Inductor settings that aitune patches for a build apply process-wide for that
moment; Dynamo, AOTAutograd and Inductor run in the worker's interpreter, and some of their steps (unpickling a
saved function, executing generated code, loading kernels) hold the interpreter lock for hundreds of ms, which
the script's calls then wait for.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from aitune.torch import _timing

logger = logging.getLogger(__name__)

#: The switch interval while the worker runs (seconds).
SWITCH_INTERVAL_S = 0.0005
#: How long a slice waits for the script's calls in flight to return before it is timed anyway (seconds).
SLICE_WAIT_S = 0.25
#: How long the worker waits with nothing queued before its thread ends (seconds).
IDLE_EXIT_S = 0.5
#: At interpreter exit, how long a tuning under way is waited for (seconds).
EXIT_WAIT_S = 30.0
#: The reason a signature gets when the script ends before its tuning does.
AT_EXIT = "the script ended before its background tuning did"
#: The script's own calls the eager latency is taken from, and how long the worker waits for them (seconds).
EAGER_CALLS = 10
EAGER_WAIT_S = 1.0


class Quiet:
    """Timing slices of the worker, the script's calls held off meanwhile (see the module docstring).

    `active` is read without the lock on every tracked call: while it is False a call costs nothing more."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.active = False
        self._wanted = False
        self._inside = 0
        self._waiting = 0
        self._local = threading.local()
        self.reset()

    def forget_in_forked_child(self) -> None:
        """After `os.fork`, in the child: no slice is under way there and no call is held off."""
        self._cond = threading.Condition()
        self.active = self._wanted = False
        self._inside = self._waiting = 0
        self._local = threading.local()

    def reset(self) -> None:
        self.slices = 0
        self.quiet_slices = 0
        self.longest_hold_ms = 0.0

    def enter(self) -> bool:
        """At the start of a script call while the worker tunes (not nested in another); True when the caller
        must call `leave()` after it."""
        local = self._local
        if getattr(local, "inside", False) or WORKER.in_worker():
            return False
        with self._cond:
            if self._wanted:
                self._waiting += 1
                start = time.perf_counter()
                while self._wanted:
                    self._cond.wait(SLICE_WAIT_S)
                self._waiting -= 1
                self.longest_hold_ms = max(self.longest_hold_ms, (time.perf_counter() - start) * 1000)
                self._cond.notify_all()
            self._inside += 1
        local.inside = True
        return True

    def leave(self) -> None:
        self._local.inside = False
        with self._cond:
            self._inside -= 1
            if self._inside == 0:
                self._cond.notify_all()

    @contextlib.contextmanager
    def slice(self) -> Iterator[None]:
        """One measured call of the worker: script calls that waited for the last slice go first, then the calls
        in flight return, then the slice runs with new calls held off."""
        with self._cond:
            self._cond.wait_for(lambda: self._waiting == 0, SLICE_WAIT_S)
            self._wanted = True
            quiet = self._cond.wait_for(lambda: self._inside == 0, SLICE_WAIT_S)
        self.slices += 1
        self.quiet_slices += bool(quiet)
        try:
            yield
        finally:
            with self._cond:
                self._wanted = False
                self._cond.notify_all()


QUIET = Quiet()


class EagerProbe:
    """The script's next eager calls of one signature, timed where they run (see `eager_in_place`)."""

    def __init__(self, calls: int, device: torch.device) -> None:
        self.calls = calls
        self.device = device
        self.times: list[float] = []
        self.done = threading.Event()

    def run(self, eager: Callable[[], Any]) -> Any:
        """One script call, eagerly, synchronized before and after and timed."""
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        out = eager()
        if cuda:
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter() - start)
        if len(self.times) >= self.calls:
            self.done.set()
        return out


def eager_in_place(sig: Any, device: torch.device) -> float | None:
    """The median latency of the script's own next eager calls of `sig` (ms; the first is left out), or None
    when fewer than three came within EAGER_WAIT_S. Called by the worker, which does nothing meanwhile; the
    figure becomes the limit of its timing slices (`_timing.HELD_OFF.limit_ms`)."""
    probe = EagerProbe(EAGER_CALLS + 1, device)
    sig.eager_probe = probe
    try:
        probe.done.wait(EAGER_WAIT_S)
    finally:
        sig.eager_probe = None
    times = list(probe.times)[1:]
    if len(times) < 3:
        return None
    sig.timing["eager"] = f"in place: {len(times)} of the script's own calls, synchronized before and after"
    ms = statistics.median(times) * 1000
    _timing.HELD_OFF.limit_ms = ms
    return ms


Job = tuple[Any, Any, Callable[[Any, Any], None]]  # (front's module state, SignatureRecord, what tunes it)


class Worker:
    """The one worker thread and its queue."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: list[Job] = []
        self._busy = False
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._why = ""
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
            self._queue.append((st, sig, run))
            if self._thread is None or not self._thread.is_alive():
                guard_fx_patches()
                self._thread = threading.Thread(target=self._loop, name="aitune-tuning", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        logger.info("%s: queued for tuning in the background; its calls run eagerly until it is decided",
                    getattr(st, "name", "?"))
        return True

    def _next(self) -> Job | None:
        """The next job, outermost module first; None when stopping, or after IDLE_EXIT_S with nothing queued
        (the thread then ends: on the CPU, a thread that has run torch ops keeps an OpenMP thread team of its
        own, which slowed the script's later calls 1.6-1.8x on a 2-core machine while it lived)."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._idle()
                if not self._cond.wait(IDLE_EXIT_S) and not self._queue:
                    self._thread = None  # the next submit starts a new one
                    return None
            if self._stopping:
                return None
            self._queue.sort(key=lambda job: getattr(job[0], "depth", 0))
            self._busy = True
            QUIET.active = True
            if self._saved_interval is None:
                self._saved_interval = sys.getswitchinterval()
                sys.setswitchinterval(min(self._saved_interval, SWITCH_INTERVAL_S))
            return self._queue.pop(0)

    def _idle(self) -> None:
        """Nothing queued: back to the normal switch interval, and wake whoever waits (caller holds the lock)."""
        QUIET.active = False
        if self._saved_interval is not None:
            sys.setswitchinterval(self._saved_interval)
            self._saved_interval = None
        self._cond.notify_all()

    def _abandoned(self) -> str | None:
        return self._why if self._stopping else None

    def _loop(self) -> None:
        _timing.HELD_OFF.slice = QUIET.slice
        _timing.HELD_OFF.abandoned = self._abandoned
        while True:
            job = self._next()
            if job is None:
                return
            st, sig, run = job
            QUIET.reset()
            _timing.HELD_OFF.limit_ms = None
            sig.timing = {"thread": "background worker", "eager": "timed by the worker, in slices"}
            try:
                run(st, sig)  # decide() claims the queued signature
            except _timing.Abandoned as e:
                logger.info("%s: tuning abandoned (%s); it runs eagerly", getattr(st, "name", "?"), e)
                with sig.lock:
                    if sig.status in ("queued", "recording", "tuning"):
                        sig.status = "eager"
                        sig.reason = f"tuning abandoned: {e}"[:500]
            except Exception as e:  # the worker never dies of one module: it stays eager, with the reason
                logger.warning("%s: background tuning failed (%s: %s); it runs eagerly", getattr(st, "name", "?"),
                               type(e).__name__, str(e)[:300])
                with sig.lock:
                    if sig.status in ("queued", "recording", "tuning"):
                        sig.status = "eager"
                        sig.reason = f"background tuning failed: {type(e).__name__}: {e}"[:500]
            finally:
                sig.timing.update(held_off_slices=QUIET.slices, quiet_slices=QUIET.quiet_slices,
                                  longest_hold_ms=round(QUIET.longest_hold_ms, 3))
                with self._cond:
                    self._busy = False
                    if not self._queue:
                        self._idle()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or being tuned (True), or `timeout` seconds passed (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def stop(self, wait_s: float = 0.0, why: str = "background tuning stopped before it was tuned") -> None:
        """Drop the queue (its signatures run eagerly, with `why` as their reason) and have the worker abandon its
        current tuning at its next step, waiting for that up to `wait_s` seconds (at interpreter exit: torch torn
        down under a thread still compiling can crash the process)."""
        with self._cond:
            self._why = why
            self._stopping = True
            dropped, self._queue = self._queue, []
            busy = self._busy
            self._cond.notify_all()
        if busy and wait_s > 0:
            logger.info("abandoning the background tuning under way (waiting up to %.0f s for its current step)",
                        wait_s)
            if not self.wait(wait_s):
                logger.warning("the background tuning under way did not end within %.0f s; exiting anyway", wait_s)
        for _, sig, _ in dropped:
            with sig.lock:
                if sig.status == "queued":
                    sig.status = "eager"
                    sig.reason = why

    def forget_in_forked_child(self) -> None:
        """In the child of an `os.fork`: the parent's worker thread does not exist here, and its locks may have
        been held at the fork. Nothing is queued or under way, and nothing will be (the child does not tune)."""
        self._cond = threading.Condition()
        self._queue = []
        self._busy = False
        self._thread = None
        self._stopping = True
        self._why = "the process is a fork of the one that tunes"
        QUIET.forget_in_forked_child()

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
