"""Shared fixtures: every test starts with aitune disabled, no tracked modules and default settings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)


@pytest.fixture(scope="session")
def config_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """XDG_CONFIG_HOME of every test and of the scripts they run: the cache secret is made there, not in the
    user's home. One for the session, so that runs of one test (and subprocesses) share it."""
    home = tmp_path_factory.mktemp("config-home")
    home.chmod(0o700)
    return home


@pytest.fixture(autouse=True)
def _clean_aitune(monkeypatch: pytest.MonkeyPatch, config_home: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("AITUNE_") or name == "AUTOWRAPT_BOOTSTRAP":
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    yield
    from aitune.torch import cache
    from aitune.torch._signature import _purity, _record, _reuse, _route, _weights
    from aitune.torch.backend import _defaults, _inductor_aot
    from aitune.torch.jit import _hook, _tracker, _tuner

    cache.reset()
    _defaults.reset()
    _inductor_aot.reset()
    _hook.uninstall()
    _tracker.reset()
    _tuner.reset()
    _route.reset()
    _record.reset()
    _reuse.reset()
    _purity.reset()
    _weights.unwatch()
    from aitune.torch._settings._sources import reset_settings

    reset_settings()
