"""End-to-end: unchanged user scripts run with `AUTOWRAPT_BOOTSTRAP=aitune_enable_jit_tuning`, as a user would.

Each test runs a script of tests/e2e/scripts/ in a subprocess with the hook and compares its saved results with
the plain run's, then reads the JSON report. `AITUNE_MIN_SPEEDUP=1e-6` makes the top module's engine win
whatever the CPU timing noise, so the tests that assert "tuned" are deterministic (and each compiles once); the
harness also pins one intra-op thread (see `harness.base_env`), without which a loaded machine turns the noise
into factors of several hundred.

Tests of tests/e2e fail (rather than skip) when the hook does nothing: a missing report is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from tests.e2e.harness import ScriptRun, assert_results_close

INDUCTOR = "TorchInductorJitBackend"
#: The CPU default candidates (with the extras CI installs): either may win.
CPU_DEFAULTS = (INDUCTOR, "ONNXRuntimeBackend")
#: Let any correct engine win and keep serving, so the outcome does not depend on CPU timings (the in-place check
#: of an engine, timed inside the script, is off: tests/e2e/test_inplace_check.py covers it).
ALWAYS_TUNE = {"AITUNE_MIN_SPEEDUP": "1e-6", "AITUNE_INPLACE_CHECK_CALLS": "0"}

PlainRun = Callable[[str], ScriptRun]
HookedRun = Callable[..., ScriptRun]


def assert_tuned(run: ScriptRun, name: str, *, calls: int) -> dict[str, Any]:
    """The module is tuned with a default backend, saw `calls` inference calls, and its winner was checked ok."""
    report = run.report
    assert report is not None
    assert report["version"] == 1
    assert isinstance(report["environment"], dict)
    entry = run.module(name)
    assert entry["state"] == "tuned", f"{name}: {entry}\n{run.describe()}"
    assert entry["backend"] in CPU_DEFAULTS, entry
    assert entry["calls"] == calls, f"{name}: expected {calls} calls, report says {entry['calls']}"
    assert any(c["backend"].startswith(entry["backend"]) and c["ok"] for c in entry["candidates"]), entry["candidates"]
    assert entry["eager_latency_ms"] is not None and entry["tuned_latency_ms"] is not None, entry
    # A failure inside the hook is logged once, naming the switch that makes it raise, and the call runs eagerly.
    assert "AITUNE_STRICT" not in run.stderr, f"the hook reported a failure\n{run.describe()}"
    return entry


def engine_calls(entry: dict[str, Any]) -> int:
    return sum(int(s.get("engine_calls", 0)) for s in entry["signatures"])


def test_cnn_is_tuned_and_matches_eager(plain_run: PlainRun, hooked_run: HookedRun) -> None:
    plain = plain_run("cnn")
    hooked = hooked_run("cnn", **ALWAYS_TUNE).check()

    assert_results_close(hooked, plain)
    net = assert_tuned(hooked, "Net", calls=11)
    # 3 calls are recorded; the engine may serve the other 7 of the fixed batch (the smaller batch is outside
    # the recorded shapes and may run eagerly).
    assert 1 <= engine_calls(net) <= 8, f"calls routed to the engine: {net}"
    # Both CPU default candidates were built and checked against eager.
    assert {c["backend"] for c in net["candidates"] if c["ok"]} == set(CPU_DEFAULTS), net["candidates"]
    # Its submodules now run inside Net's engine.
    for entry in hooked.report["modules"]:  # type: ignore[index]
        if entry["name"].startswith("Net."):
            assert entry["state"] == "detached", entry
    assert "[aitune]" in hooked.stderr
    assert "Net" in hooked.stderr.split("[aitune]")[-1], "the exit summary should name the tuned module"


def test_inspect_mode_tunes_nothing(plain_run: PlainRun, hooked_run: HookedRun) -> None:
    plain = plain_run("cnn")
    hooked = hooked_run("cnn", AITUNE_JIT_MODE="inspect", **ALWAYS_TUNE).check()

    assert_results_close(hooked, plain)
    modules = hooked.report["modules"]  # type: ignore[index]
    assert [m["name"] for m in modules if m["state"] == "tuned"] == []
    assert all(m["backend"] is None for m in modules), modules
    net = hooked.module("Net")
    assert net["state"] == "recording", net
    assert net["calls"] == 11
    assert engine_calls(net) == 0
    assert hooked.report["environment"].get("mode", "inspect") == "inspect"  # type: ignore[index]


def test_bad_setting_stops_at_start_up(hooked_run: HookedRun) -> None:
    run = hooked_run("cnn", AITUNE_JIT_MIN_SAMPLES="zero")

    assert run.returncode != 0, f"a bad setting must stop the script\n{run.describe()}"
    assert "AITUNE_JIT_MIN_SAMPLES" in run.stderr, run.describe()
    assert "Traceback" not in run.stderr, f"a bad setting must not produce a traceback\n{run.describe()}"
    assert run.results is None, "the script must not have run"
    assert "cnn: done" not in run.stdout


def test_bert_keyword_call_is_tuned(plain_run: PlainRun, hooked_run: HookedRun) -> None:
    pytest.importorskip("transformers", reason="bert.py needs transformers (pip install aitune[test])")
    plain = plain_run("bert")
    hooked = hooked_run("bert", **ALWAYS_TUNE).check()

    assert_results_close(hooked, plain)
    entry = assert_tuned(hooked, "BertModel", calls=8)
    assert engine_calls(entry) >= 1, entry
    assert entry["class"].endswith("BertModel"), entry
    inputs = {i["name"] for s in entry["signatures"] for i in s.get("inputs", [])}
    if inputs:  # keyword arguments are recorded under their parameter names
        assert {"input_ids", "attention_mask", "token_type_ids"} <= inputs, inputs


@pytest.mark.parametrize("backends", ["defaults", "ONNXRuntimeBackend"])
def test_training_is_untouched(plain_run: PlainRun, hooked_run: HookedRun, backends: str) -> None:
    plain = plain_run("train")
    env = {} if backends == "defaults" else {"AITUNE_JIT_BACKENDS": backends}
    hooked = hooked_run("train", AITUNE_JIT_MIN_SAMPLES="3", **env, **ALWAYS_TUNE).check()

    # Training runs exactly as without aitune: same losses and weights, bit for bit.
    assert_results_close(hooked, plain, exact=("losses", "loss_tensor", "final_weight"))
    # Only the 12 eval-mode calls count (3 after every 5th step); 3 are recorded. An engine that holds a copy of
    # the weights (ONNX Runtime) is dropped at the next optimizer step, never answering with stale weights; after
    # the second such change only backends that read the live weights are tried: Inductor, whose engine follows
    # training. With ONNX Runtime alone, the module then stays eager and says why.
    if backends == "defaults":
        mlp = assert_tuned(hooked, "MLP", calls=12)
        assert mlp["backend"] == INDUCTOR, mlp
        assert engine_calls(mlp) >= 3, mlp
    else:
        mlp = hooked.module("MLP")
        assert mlp["state"] == "eager" and engine_calls(mlp) == 0, mlp
        assert any("weights keep changing in place" in (s["reason"] or "") for s in mlp["signatures"]), mlp
        assert "only backends that read the live weights" in hooked.stderr


def test_concurrent_threads(plain_run: PlainRun, hooked_run: HookedRun) -> None:
    plain = plain_run("threads")
    hooked = hooked_run("threads", **ALWAYS_TUNE).check()

    assert_results_close(hooked, plain)
    net = assert_tuned(hooked, "Net", calls=80)
    # Tuning finishes within the first round; all 40 calls of the second round run the engine concurrently.
    assert engine_calls(net) >= 40, net
    assert "Net#2" not in {m["name"] for m in hooked.report["modules"]}  # type: ignore[index]


@pytest.mark.parametrize("backend", [INDUCTOR, "ONNXRuntimeBackend"])
def test_weights_reloaded_after_tuning(plain_run: PlainRun, hooked_run: HookedRun, backend: str) -> None:
    plain = plain_run("reload")
    hooked = hooked_run("reload", AITUNE_JIT_BACKENDS=backend, **ALWAYS_TUNE).check()
    r = hooked.results
    assert r is not None

    # The script really changes what the model computes, so serving a stale engine would be caught.
    for run in (plain, hooked):
        res = run.results
        assert res is not None
        assert not torch.allclose(res["reloaded_0"], res["before_5"], rtol=0.1, atol=0.1)
        assert not torch.allclose(res["scaled_0"], res["reloaded_3"], rtol=0.1, atol=0.1)
    assert_results_close(hooked, plain)
    if backend == INDUCTOR:
        net = assert_tuned(hooked, "Net", calls=12)
        # Calls 4-6 are the only ones before the reload; more engine calls than that means an engine (kept or
        # rebuilt) served calls after the weights changed, and the comparison above shows it followed them.
        assert engine_calls(net) >= 4, net
    else:
        # ONNX Runtime holds a copy of the weights: the reload and then the in-place scale each drop its engine
        # (the matching results above show no stale engine answered). After the reload it is rebuilt and serves
        # the last reloaded call; the two calls after the scale are being recorded again when the script ends.
        net = hooked.module("Net")
        assert net["state"] == "recording", net
        assert engine_calls(net) >= 4, net


def test_override_file_picks_onnxruntime(plain_run: PlainRun, hooked_run: HookedRun) -> None:
    """configs/onnxruntime.toml with ONNX Runtime forced to win: the script's results still match eager."""
    from pathlib import Path

    plain = plain_run("cnn")
    config = Path(__file__).resolve().parents[2] / "configs" / "onnxruntime.toml"
    hooked = hooked_run("cnn", AITUNE_JIT_CONFIG=str(config), AITUNE_JIT_STRATEGY="first_wins").check()
    assert_results_close(hooked, plain)
    net = hooked.module("Net")
    assert net["state"] == "tuned" and net["backend"] == "ONNXRuntimeBackend", net
    assert engine_calls(net) >= 1


def test_a_model_the_script_compiles_itself_is_left_to_torch_compile(plain_run: PlainRun,
                                                                      hooked_run: HookedRun) -> None:
    """torch.compile's module wrapper has a `__call__` of its own: aitune never sees its calls, and its summary
    says why nothing was tuned instead of guessing at eval mode."""
    hooked = hooked_run("user_compiled", **ALWAYS_TUNE).check()
    assert_results_close(hooked, plain_run("user_compiled"))
    assert hooked.report is not None and hooked.report["modules"] == [], hooked.describe()
    assert "ran under its own torch.compile" in hooked.stderr, hooked.stderr
