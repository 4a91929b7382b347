"""Fixtures of the unit tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.helpers import PAYLOAD_C, FakeBackend


@pytest.fixture
def fast_tuning() -> None:
    """CPU timings of tiny models are noise: accept any correct engine, and time briefly (the root conftest
    resets the settings after each test)."""
    from aitune.torch.config import config as global_config

    global_config.min_speedup = 1e-6
    global_config.timing_warmup = 0
    global_config.timing_iterations = 3
    global_config.timing_max_seconds = 0.5


@pytest.fixture
def fake_backend() -> None:
    """JIT mode with the fake backend as the only candidate (tests/unit/helpers.py), tuning after two calls, any
    correct engine accepted, timed briefly (the root conftest resets the settings after each test)."""
    from aitune.torch.config import config as global_config
    from aitune.torch.jit.config import config as jit_config

    FakeBackend.calls.clear()
    FakeBackend.builds.clear()
    jit_config.backends = [FakeBackend()]
    jit_config.min_samples = 2
    global_config.min_speedup = 1e-6
    global_config.timing_iterations = 2
    global_config.timing_warmup = 0


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
