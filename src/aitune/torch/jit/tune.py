"""Explicit trigger for `JITMode.TUNE_DEFERRED`: record while the script warms up, then tune on request."""

from __future__ import annotations

import logging

from aitune.torch.jit import _report, _tuner
from aitune.torch.jit.config import SETTINGS

logger = logging.getLogger(__name__)


def deferred() -> int:
    """Tune every module recorded so far, outermost first (children of modules that stay eager next).

    Returns the number of signatures tuned. In INSPECT mode nothing is tuned.
    """
    if SETTINGS.mode == "inspect":
        logger.info("inspect mode: deferred() tunes nothing")
        return 0
    total = 0
    while True:
        done = _tuner.tune_pending()
        total += done
        if done == 0:
            break
    try:
        _report.write_report()
    except Exception:  # the report is a by-product: failing to write it never fails the script
        logger.debug("writing the report failed", exc_info=True)
    return total


__all__ = ["deferred"]
