"""The repository stays ruff-clean (settings in pyproject.toml's [tool.ruff])."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def test_ruff_clean() -> None:
    pytest.importorskip("ruff")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", str(root)], cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
