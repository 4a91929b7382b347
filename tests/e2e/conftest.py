"""Fixtures of the end-to-end tests: plain runs (cached per session) and hooked runs of tests/e2e/scripts/."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import TIMINGS, ScriptRun, run_script


@pytest.fixture(scope="session", autouse=True)
def _autowrapt_installed() -> None:
    try:
        import autowrapt  # noqa: F401
    except ImportError:
        pytest.fail("the e2e tests need autowrapt (a dependency of aitune): pip install autowrapt")


@pytest.fixture(scope="session")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], ScriptRun]:
    """`plain_run("cnn")`: the script's run without aitune (computed once per session)."""
    cache: dict[str, ScriptRun] = {}

    def get(script: str) -> ScriptRun:
        if script not in cache:
            cache[script] = run_script(script, tmp_path_factory.mktemp(f"{script}-plain"), hooked=False).check()
        return cache[script]

    return get


@pytest.fixture
def hooked_run(tmp_path: Path) -> Callable[..., ScriptRun]:
    """`hooked_run("cnn", AITUNE_JIT_MODE="inspect")`: the script run with the JIT hook and a report."""
    counter = [0]

    def run(script: str, **env: str) -> ScriptRun:
        counter[0] += 1
        return run_script(script, tmp_path / f"{script}-hooked-{counter[0]}", hooked=True, env=env)

    return run


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TIMINGS:
        return
    terminalreporter.section("e2e subprocess timings")
    for what, seconds in TIMINGS:
        terminalreporter.write_line(f"{seconds:7.1f}s  {what}")
    terminalreporter.write_line(f"{sum(s for _, s in TIMINGS):7.1f}s  total")
