"""What the libraries aitune drives say while aitune works goes to aitune's log, not to the user's terminal.

Exporting to ONNX, compiling and timing candidates make torch, onnxscript and others log notices ("torchvision
is not installed", Dynamo recompile warnings) and raise Python warnings. Inside `libraries_quiet()` every such
record or warning emitted by this thread is re-logged on aitune's logger at DEBUG (so `AITUNE_JIT_LOG_LEVEL=OFF`
prints none of it, and DEBUG shows it all) instead of being printed; other threads, the user's, are untouched.

Known limit: what native code writes to the process's stderr itself (ONNX Runtime's or TensorRT's own prints)
cannot be told apart by thread and is left alone.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger("aitune.libraries")

_LIBRARIES = ("torch", "onnx", "onnxscript", "onnxruntime", "onnx_ir", "transformers", "modelopt", "tensorrt",
              "torch_tensorrt", "py.warnings")


class _Local(threading.local):
    depth = 0


_LOCAL = _Local()
_lock = threading.Lock()
_original_showwarning: list[Any] = []


class _ThisThread(logging.Filter):
    """Drops (and re-logs at DEBUG) the records of the thread aitune is working on."""

    def __init__(self, ident: int) -> None:
        super().__init__()
        self.ident = ident

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.ident or record.name.startswith("aitune"):
            return True
        logger.debug("[%s] %s", record.name, record.getMessage())
        return False


def _handlers() -> list[logging.Handler]:
    """The handlers a library record can reach: those of the libraries' loggers, of the root logger, and the
    last resort that prints records no handler took (onnxscript's "Evaluation failed" warnings)."""
    found: dict[int, logging.Handler] = {id(h): h for h in logging.getLogger().handlers}
    if logging.lastResort is not None:  # where a record goes when no logger on its way has a handler
        found[id(logging.lastResort)] = logging.lastResort
    for name, item in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(item, logging.Logger) and name.split(".")[0] in _LIBRARIES:
            for handler in item.handlers:
                found[id(handler)] = handler
    return list(found.values())


def _showwarning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                 line: str | None = None) -> None:
    if _LOCAL.depth:
        logger.debug("[warning] %s:%d: %s: %s", filename, lineno, getattr(category, "__name__", category), message)
        return
    _original_showwarning[0](message, category, filename, lineno, file, line)


@contextlib.contextmanager
def libraries_quiet() -> Iterator[None]:
    """Re-log what libraries say on this thread at DEBUG, for the duration (nests)."""
    with _lock:
        if not _original_showwarning:
            _original_showwarning.append(warnings.showwarning)
            warnings.showwarning = _showwarning
    only_this = _ThisThread(threading.get_ident())
    handlers = _handlers()
    for handler in handlers:
        handler.addFilter(only_this)
    _LOCAL.depth += 1
    try:
        yield
    finally:
        _LOCAL.depth -= 1
        for handler in handlers:
            handler.removeFilter(only_this)
