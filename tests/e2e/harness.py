"""Running the user scripts of tests/e2e/scripts/ in subprocesses, with and without the JIT hook.

A user enables aitune with `AUTOWRAPT_BOOTSTRAP=aitune_enable_jit_tuning python script.py`; `run_script` does
exactly that, with `sys.executable`, so the scripts themselves know nothing about aitune. Every script takes the
path of a `torch.save` file as its only argument and writes its results there.

`AITUNE_E2E_TIMEOUT` (seconds, default 300) bounds each subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

SCRIPTS = Path(__file__).parent / "scripts"
TIMEOUT_S = float(os.environ.get("AITUNE_E2E_TIMEOUT", "300"))
BOOTSTRAP = "aitune_enable_jit_tuning"
#: Tolerances for comparing hooked outputs with plain ones (Inductor fuses and reorders float math).
RTOL = ATOL = 1e-3


@dataclass
class ScriptRun:
    """What one subprocess run of a script left behind."""

    script: str
    hooked: bool
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    results: dict[str, Any] | None = None
    report: dict[str, Any] | None = None
    env: dict[str, str] = field(default_factory=dict, repr=False)

    def describe(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in sorted(self.env.items()))
        return (f"{self.script} ({'hooked' if self.hooked else 'plain'}{', ' + extra if extra else ''}) exited "
                f"{self.returncode} after {self.seconds:.1f}s\n--- stdout ---\n{self.stdout[-4000:]}\n"
                f"--- stderr ---\n{self.stderr[-12000:]}")

    def check(self) -> ScriptRun:
        assert self.returncode == 0, self.describe()
        assert self.results is not None, f"no results file was written\n{self.describe()}"
        if self.hooked:
            assert self.report is not None, f"no aitune report was written\n{self.describe()}"
        return self

    def module(self, name: str) -> dict[str, Any]:
        """The report entry of the module called `name` (fails listing the names that exist)."""
        assert self.report is not None, f"no aitune report\n{self.describe()}"
        modules = self.report["modules"]
        for m in modules:
            if m["name"] == name:
                return m  # type: ignore[no-any-return]
        names = ", ".join(f"{m['name']}[{m['state']}]" for m in modules)
        raise AssertionError(f"module {name!r} is not in the report; it has: {names}\n{self.describe()}")


#: Wall time of every subprocess run, for the summary printed at the end of the session.
TIMINGS: list[tuple[str, float]] = []


def base_env() -> dict[str, str]:
    """The caller's environment without any aitune or autowrapt setting (so a plain run is really plain).

    One intra-op thread, in plain and hooked runs alike: Inductor's CPU kernels open an OpenMP parallel region
    even for tiny tensors, and when anything else is using the cores (a CI neighbour, a parallel test) each
    region waits a scheduler slice for its descheduled thread, so a 0.05 ms module measures 40 ms. That makes
    the tuning decision depend on the machine's load, not on aitune; with one thread it does not.
    """
    env = {k: v for k, v in os.environ.items() if not (k.startswith("AITUNE_") or k == "AUTOWRAPT_BOOTSTRAP")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_script(script: str, workdir: Path, *, hooked: bool, env: Mapping[str, str] | None = None) -> ScriptRun:
    """Run tests/e2e/scripts/<script>.py in a fresh interpreter; load its results and report if written."""
    workdir.mkdir(parents=True, exist_ok=True)
    out_path = workdir / f"{script}.pt"
    report_path = workdir / "report.json"
    extra: dict[str, str] = {}
    if hooked:
        extra["AUTOWRAPT_BOOTSTRAP"] = BOOTSTRAP
        extra["AITUNE_JIT_REPORT"] = str(report_path)
    extra.update(env or {})
    full_env = {**base_env(), **extra}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(SCRIPTS / f"{script}.py"), str(out_path)], env=full_env,
                              cwd=workdir, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"{script} ({'hooked' if hooked else 'plain'}) did not finish within {TIMEOUT_S:.0f}s "
                    f"(AITUNE_E2E_TIMEOUT)\n--- stderr ---\n{stderr[-12000:]}")
    seconds = time.perf_counter() - start
    TIMINGS.append((f"{script} {'hooked' if hooked else 'plain'} {' '.join(sorted(extra))}", seconds))
    run = ScriptRun(script, hooked, proc.returncode, proc.stdout, proc.stderr, seconds, env=extra)
    if out_path.exists():
        run.results = torch.load(out_path, weights_only=True)
    if report_path.exists():
        run.report = json.loads(report_path.read_text())
    return run


def assert_results_close(actual: ScriptRun, expected: ScriptRun, *, exact: tuple[str, ...] = ()) -> None:
    """Same keys; float tensors within RTOL/ATOL; other tensors, numbers and the `exact` keys bit-identical."""
    a, e = actual.results, expected.results
    assert a is not None and e is not None
    assert sorted(a) == sorted(e), f"{actual.script}: result keys differ: {sorted(a)} vs {sorted(e)}"
    for key in e:
        got, want = a[key], e[key]
        where = f"{actual.script}: result {key!r} with aitune differs from the plain run"
        if key in exact:
            if isinstance(want, torch.Tensor):
                assert torch.equal(got, want), f"{where} (must be bit-identical):\n{got}\nvs\n{want}"
            else:
                assert got == want, f"{where} (must be bit-identical):\n{got}\nvs\n{want}"
        elif isinstance(want, torch.Tensor) and want.is_floating_point():
            torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=lambda m, w=where: f"{w}: {m}")
        elif isinstance(want, torch.Tensor):
            assert torch.equal(got, want), where
        else:
            assert got == pytest.approx(want, rel=RTOL, abs=ATOL), where
