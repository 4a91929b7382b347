"""Latency measurement: warm-up, then a measured window of single calls, device-synchronized, median.

A thread may ask for each measured call to run in a slice of its own (`HELD_OFF.slice`): background tuning's
worker holds the script's calls off meanwhile (`_signature._background.Quiet`), so that they do not decide the
winner. A call that takes longer than `HELD_OFF.limit_ms` ends the slices for the rest of that measurement (it is
slower than eager, so it cannot win, and the script's calls are not held off that long).

A thread may also say when its work is to be abandoned (`HELD_OFF.abandoned`: the background worker at
interpreter exit); `checkpoint()`, called between the steps of a tuning and before each measured call, then raises
`Abandoned`, which no handler of a failed candidate catches.

Known limit: each call is synchronized, so the figure is latency, not pipelined throughput.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import torch


class HeldOff(threading.local):
    """Per thread: what each measured call runs in (see the module docstring)."""

    slice: Callable[[], contextlib.AbstractContextManager[Any]] | None = None
    limit_ms: float | None = None
    abandoned: Callable[[], str | None] | None = None


HELD_OFF = HeldOff()


class Abandoned(BaseException):
    """The tuning under way is given up (why: the message). A BaseException, as KeyboardInterrupt is: the handlers
    that turn a backend's failure into a rejected candidate must not take it for one."""


def checkpoint() -> None:
    """Raise `Abandoned` if this thread's work is to be given up (see the module docstring); else nothing."""
    abandoned = HELD_OFF.abandoned
    if abandoned is not None:
        why = abandoned()
        if why is not None:
            raise Abandoned(why)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency_ms(fn: Callable[..., Any], inputs: Callable[[], tuple[tuple[Any, ...], dict[str, Any]]],
                       device: torch.device, *, warmup: int, iterations: int, max_seconds: float) -> float:
    """Median latency of `fn(*args, **kwargs)` in milliseconds, within a time budget of `max_seconds`; `inputs()`
    gives each call's (args, kwargs), outside the measured window."""
    start = time.perf_counter()
    checkpoint()
    for _ in range(warmup):
        args, kwargs = inputs()
        fn(*args, **kwargs)
        if time.perf_counter() - start > max_seconds / 2:
            break
    _sync(device)
    times: list[float] = []
    budget_end = time.perf_counter() + max_seconds
    held = HELD_OFF.slice
    limit = HELD_OFF.limit_ms
    for _ in range(iterations):
        checkpoint()
        args, kwargs = inputs()
        with held() if held is not None else contextlib.nullcontext():
            _sync(device)
            t0 = time.perf_counter()
            fn(*args, **kwargs)
            _sync(device)
            t1 = time.perf_counter()
        times.append(t1 - t0)
        if limit is not None and (t1 - t0) * 1000 > limit:
            held = None
        if t1 > budget_end and len(times) >= 3:
            break
    return statistics.median(times) * 1000.0
