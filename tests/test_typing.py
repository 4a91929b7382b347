"""src/ stays mypy-clean (settings in setup.cfg)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def test_mypy_clean_on_src() -> None:
    pytest.importorskip("mypy")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(root / "setup.cfg")], cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
