"""The in-place check: after an engine starts serving, is the script really faster with it?

A candidate timed faster on its own can be slower inside the running script: an ONNX Runtime engine's spinning
thread pool competes with torch's threads for the cores, a CUDA-graph engine's output copies cost more than its
launches save, a child engine's speedup vanishes in its parent's traffic. So for its first `calls` routed calls
(`inplace_check_calls`) a freshly installed engine takes turns with eager in blocks (engine, eager, engine,
eager, ... a quarter of the window each), and what is timed is the *period* of the module's calls: from the start
of one call to the start of the next. A period holds the call and whatever the script did until it called again,
so an engine that slows the code around it is caught as well as one that is slow itself. After the window the
median period under each route is compared: an engine whose median is not below eager's is dropped, with its
figures logged and in the report (`inplace`), and the front carries on as for a module that could not be made
faster (JIT mode: its children are tried).

Periods during which aitune did its own work (tuning anything, confirming an engine on a live call) are left
out (`ACTIVITY`); when too few remain the window is run again, up to three times, and then the engine stays
(inconclusive). A module called from several threads is not checked: its periods would interleave.

Known limit: on CUDA nothing is synchronized, so a script that never waits for the GPU is compared on how fast
its calls are issued until the GPU's queue fills, and on how fast the GPU runs them after that.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

#: Each block is this share of the window.
BLOCKS = 4
#: Windows run before an inconclusive check gives up (the engine then stays).
MAX_WINDOWS = 3
#: Periods needed under each route for a verdict.
MIN_PERIODS = 3

Verdict = Literal["running", "kept", "reverted", "inconclusive", "skipped"]


class Activity:
    """Counts aitune's own work that takes time inside a user's call (tuning, live confirmations): a period
    during which the count moved is not a period of the user's script alone."""

    def __init__(self) -> None:
        self.value = 0

    def bump(self) -> None:
        self.value += 1


ACTIVITY = Activity()


class InPlaceCheck:
    """The in-place A/B of one signature's engine (see the module docstring). `route()` is called at the start of
    every call routed to the engine's range (caller holds the signature's lock).

    The same A/B serves other pairs (`backend._graphs.GraphAtSwitch`: a CUDA graph against the engine inside it):
    `subject` and `rival` name the two sides in the reasons; with `adjacent` (a counter of the signature's calls,
    all routes) a period counts only when no other call of the signature came between its two calls."""

    def __init__(self, calls: int, *, subject: str = "the engine", rival: str = "eager",
                 adjacent: Callable[[], int] | None = None) -> None:
        self.calls = max(BLOCKS, calls)
        self.subject, self.rival = subject, rival
        self._adjacent = adjacent
        self.block = max(1, self.calls // BLOCKS)
        self.periods: dict[str, list[float]] = {"engine": [], "eager": []}
        self.verdict: Verdict = "running"
        self.engine_ms: float | None = None
        self.eager_ms: float | None = None
        self.why: str | None = None
        self._seen = 0  # calls of the current window
        self._windows = 1
        self._last: tuple[float, str, int, int] | None = None  # the previous call: start, route, activity, count
        # The thread of its first call: the check is made where the engine serves (background tuning installs
        # engines from aitune's worker thread).
        self._thread: int | None = None

    def route(self, now: float | None = None) -> Literal["engine", "eager", "done"]:
        """Where this call goes: "engine" or "eager" while the check runs, "done" once it has a verdict."""
        if self.verdict != "running":
            return "done"
        now = time.perf_counter() if now is None else now
        if self._thread is None:
            self._thread = threading.get_ident()
        elif threading.get_ident() != self._thread:
            self._finish("skipped", "calls come from several threads")
            return "done"
        last, activity = self._last, ACTIVITY.value
        count = self._adjacent() if self._adjacent is not None else 0
        if last is not None and last[2] == activity and (self._adjacent is None or count == last[3] + 1):
            self.periods[last[1]].append(now - last[0])
        if self._seen >= self.calls:
            if self._conclude():
                return "done"
        route: Literal["engine", "eager"] = "engine" if (self._seen // self.block) % 2 == 0 else "eager"
        self._seen += 1
        self._last = (now, route, activity, count)
        return route

    def _conclude(self) -> bool:
        """At the end of a window: a verdict when there are enough periods, else another window (or give up)."""
        engine, eager = self.periods["engine"], self.periods["eager"]
        if len(engine) >= MIN_PERIODS and len(eager) >= MIN_PERIODS:
            self.engine_ms = statistics.median(engine) * 1e3
            self.eager_ms = statistics.median(eager) * 1e3
            if self.engine_ms < self.eager_ms:
                self._finish("kept", None)
            else:
                self._finish("reverted", f"in place it was not faster than {self.rival}: {self.engine_ms:.3f} ms vs "
                                         f"{self.eager_ms:.3f} ms between calls (median of {len(engine)} and "
                                         f"{len(eager)} calls)")
            return True
        if self._windows >= MAX_WINDOWS:
            self._finish("inconclusive", f"too few undisturbed calls ({len(engine)} with {self.subject}, "
                                         f"{len(eager)} with {self.rival}); {self.subject} stays")
            return True
        self._windows += 1
        self._seen = 0
        return False

    def _finish(self, verdict: Verdict, why: str | None) -> None:
        self.verdict = verdict
        self.why = why
        self._last = None

    def to_report(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "engine_period_ms": _round(self.engine_ms),
                "eager_period_ms": _round(self.eager_ms), "engine_calls": len(self.periods["engine"]),
                "eager_calls": len(self.periods["eager"]), "window_calls": self.calls, "why": self.why}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
