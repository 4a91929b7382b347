"""End-to-end: child processes of a script under the hook (DataLoader workers, forked or spawned, a plain
`os.fork` child) run their module calls as they would without aitune: nothing is tuned there, and the parent's
report stays its own."""

from __future__ import annotations

from collections.abc import Callable

import torch

from tests.e2e.harness import ScriptRun, assert_results_close

PlainRun = Callable[[str], ScriptRun]
HookedRun = Callable[..., ScriptRun]


def test_forked_workers_do_not_tune_and_leave_the_report_alone(plain_run: PlainRun, hooked_run: HookedRun) -> None:
    # Any correct engine serves, and keeps serving (timed in place next to a DataLoader, it may not win).
    run = hooked_run("forked", AITUNE_MIN_SPEEDUP="1e-6", AITUNE_JIT_BACKENDS="TorchInductorJitBackend",
                     AITUNE_INPLACE_CHECK_CALLS="0").check()
    assert_results_close(run, plain_run("forked"))
    # The workers called the transform 288 times: none of it was recorded or tuned, in them or here.
    assert "Transform" not in run.stderr, run.stderr
    assert run.report is not None
    names = [m["name"] for m in run.report["modules"]]
    assert names and all(not n.startswith("Transform") for n in names), names
    # The report is the parent's (the child exited normally, atexit and all, after the parent had tuned).
    assert run.module("Sequential")["state"] == "tuned", run.describe()
    assert run.stderr.count("aitune summary") == 1, run.stderr
    results = run.results
    assert results is not None
    # The child ran the model eagerly, so its answer is eager's; the parent's came from the engine.
    torch.testing.assert_close(results["child"], results["parent"], rtol=1e-4, atol=1e-5)
