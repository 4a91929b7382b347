"""Latency measurement: warm-up, then a measured window of single calls, device-synchronized, median.

Known limit: each call is synchronized, so the figure is latency, not pipelined throughput.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency_ms(fn: Callable[..., Any], inputs: Callable[[], tuple[tuple[Any, ...], dict[str, Any]]],
                       device: torch.device, *, warmup: int, iterations: int, max_seconds: float) -> float:
    """Median latency of `fn(*args, **kwargs)` in milliseconds, within a time budget of `max_seconds`; `inputs()`
    gives each call's (args, kwargs), outside the measured window."""
    start = time.perf_counter()
    for _ in range(warmup):
        args, kwargs = inputs()
        fn(*args, **kwargs)
        if time.perf_counter() - start > max_seconds / 2:
            break
    _sync(device)
    times: list[float] = []
    budget_end = time.perf_counter() + max_seconds
    for _ in range(iterations):
        args, kwargs = inputs()
        _sync(device)
        t0 = time.perf_counter()
        fn(*args, **kwargs)
        _sync(device)
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if t1 > budget_end and len(times) >= 3:
            break
    return statistics.median(times) * 1000.0
