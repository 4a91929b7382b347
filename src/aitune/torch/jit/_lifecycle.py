"""Turning JIT tuning on and off: settings, logging, the patch, and the report at exit."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from typing import Any

from aitune.torch import cache
from aitune.torch._signature import _hooks as hooks
from aitune.torch._signature._background import AT_EXIT, EXIT_WAIT_S, WORKER
from aitune.torch.jit import _hook, _report, _runtime, _tracker, _tuner
from aitune.torch.jit.config import SETTINGS, config, load_jit_config

logger = logging.getLogger("aitune")

_lock = threading.Lock()
_state: dict[str, Any] = {"atexit": False, "handler": None, "forked": False}


def _in_forked_child() -> None:
    """After `os.fork`, in the child (DataLoader workers, multiprocessing pools, preforking servers): aitune stands
    aside there. The original `torch.nn.Module.__call__` is back, so every call runs as it would without aitune:
    nothing is recorded or tuned (a DataLoader worker would tune its transforms anew each epoch, for nothing),
    no engine built in the parent serves (runtimes such as ONNX Runtime's thread pools are not safe across a
    fork), and neither the report nor the summary is written at the child's exit (the parent's report stays
    the parent's)."""
    global _lock
    if not _hook.is_installed():
        return
    _lock = threading.Lock()
    _state["forked"] = True
    try:
        WORKER.forget_in_forked_child()
        _hook.restore_in_forked_child()
        logger.debug("forked child %d: JIT tuning is off in it; its module calls run as without aitune", os.getpid())
    except Exception:  # nothing may fail in a fresh child: at worst the patch stays, as before this existed
        pass


def _report_at_exit() -> None:
    """The report and summary at exit, unless this process is a fork of the one that tunes, or a DataLoader
    worker (spawned ones import torch, and so aitune, afresh): their report would replace the parent's."""
    if not _state["forked"] and not _tracker.in_data_loader_worker():
        _report.at_exit()


def _setup_logging(level_name: str) -> None:
    """JIT mode is the application's entry point for aitune, so it owns a stderr handler on our logger."""
    handler = _state["handler"]
    if handler is not None:
        logger.removeHandler(handler)
        _state["handler"] = None
    name = level_name.upper()
    if name == "OFF":
        logger.setLevel(logging.CRITICAL + 1)
        return
    logger.setLevel(getattr(logging, name, logging.INFO))
    if not logging.getLogger().handlers:
        new = logging.StreamHandler(sys.stderr)
        new.setFormatter(logging.Formatter("[aitune] %(message)s"))
        logger.addHandler(new)
        logger.propagate = False
        _state["handler"] = new


def _write_report_quietly() -> None:
    try:
        _report.write_report()
    except Exception:  # the report is a by-product: failing to write it never fails the script
        logging.getLogger(__name__).debug("writing the report failed", exc_info=True)


class _Paced:
    """The report rewritten after a decision, unless the last write was less than 20 times its own duration ago:
    with thousands of modules each write costs more, and the script must not spend its time on it. A skipped
    write is made by the next decision's, and at exit."""

    def __init__(self) -> None:
        self._last_end = 0.0
        self._last_cost = 0.0

    def __call__(self) -> None:
        now = time.perf_counter()
        if now - self._last_end < 20 * self._last_cost:
            return
        _write_report_quietly()
        self._last_end = time.perf_counter()
        self._last_cost = self._last_end - now


_on_decision = _Paced()


def enable_jit_tuning() -> bool:
    """Load the settings (env vars, AITUNE_JIT_CONFIG file) and patch torch. Idempotent.

    Raises ConfigError for a bad setting. Returns False when it was already enabled.
    """
    with _lock:
        if _hook.is_installed():
            return False
        _setup_logging(str(config.log_level))  # so warnings raised while loading are seen
        load_jit_config()
        _setup_logging(str(config.log_level))
        # Opened now so that an unusable cache directory is reported (once) before the script runs.
        store = cache.configured_store(config)
        _hook.install(_runtime.make_handler(_tuner.tune_signature))
        _state["forked"] = False  # enabled anew (in a forked child too): its report is written at exit
        hooks.watch()
        WORKER.restart()
        if not _state["atexit"]:
            atexit.register(_report_at_exit)
            if hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=_in_forked_child)
            # Registered after the report, so it runs first: the queue is dropped, a tuning under way waited for
            # (a bounded time), then the report is written with its outcome.
            atexit.register(WORKER.stop, EXIT_WAIT_S, AT_EXIT)
            _state["atexit"] = True
        _tuner.LISTENERS.add(_on_decision)
    backends = ", ".join(b.describe() for b in config.backends) if config.backends else "defaults for the device"
    where = f"; cache {store.root}" if store is not None else ""
    logger.info("JIT tuning enabled (mode %s, backends: %s%s)", SETTINGS.mode, backends, where)
    return True


def disable_jit_tuning() -> bool:
    """Restore the original torch.nn.Module.__call__ exactly and drop every engine. Idempotent."""
    with _lock:
        if not _hook.uninstall():
            return False
        WORKER.stop()
        WORKER.wait(timeout=60)
        hooks.unwatch()
        _write_report_quietly()
        _tracker.reset()
    logger.info("JIT tuning disabled; torch.nn.Module.__call__ restored")
    return True


def is_enabled() -> bool:
    return _hook.is_installed()
