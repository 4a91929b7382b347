"""Runs cnn.py, but the process kills itself (SIGKILL) the moment aitune starts syncing a cache entry's files
to disk: a crash in the middle of writing the persistent cache, as a power cut or OOM kill would leave it.

Usage: python killed_mid_write.py OUT.pt
"""

import os
import runpy
import signal
import sys
from pathlib import Path

import aitune.torch.cache._store as store


def _die(path: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


store._fsync = _die
sys.argv = [str(Path(__file__).with_name("cnn.py")), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
