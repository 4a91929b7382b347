"""Shared fixtures: every test starts with aitune disabled, no tracked modules and default settings."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)


@pytest.fixture(autouse=True)
def _clean_aitune(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("AITUNE_") or name == "AUTOWRAPT_BOOTSTRAP":
            monkeypatch.delenv(name)
    yield
    from aitune.torch.jit import _hook, _runtime, _tracker

    _hook.uninstall()
    _tracker.reset()
    _runtime._warned.clear()
    from aitune.torch._settings_sources import reset_settings

    reset_settings()
