"""Fixtures of the unit tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.helpers import PAYLOAD_C


@pytest.fixture(scope="session")
def payload(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a shared library whose constructor writes a marker file, the marker's path)."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the planted library")
    d = tmp_path_factory.mktemp("payload")
    marker = d / "MARKER"
    (d / "payload.c").write_text(PAYLOAD_C)
    subprocess.run(["gcc", "-shared", "-fPIC", f'-DMARKER="{marker}"', "-o", str(d / "payload.so"),
                    str(d / "payload.c")], check=True)
    return d / "payload.so", marker
