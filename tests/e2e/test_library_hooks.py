"""End-to-end: hooks a library installs for good but that act only on some calls (transformers' output-capturing
hooks, installed on every layer the first time hidden states are asked for) do not keep the model from being tuned
whole, and the calls that ask for hidden states get them exactly."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.harness import ScriptRun, assert_results_close

PlainRun = Callable[[str], ScriptRun]
HookedRun = Callable[..., ScriptRun]
FORCED = {"AITUNE_JIT_BACKENDS": "TorchInductorJitBackend", "AITUNE_MIN_SPEEDUP": "1e-6",
          "AITUNE_INPLACE_CHECK_CALLS": "0"}


def test_a_model_asked_for_hidden_states_now_and_then_is_tuned_whole(plain_run: PlainRun,
                                                                     hooked_run: HookedRun) -> None:
    plain = plain_run("hidden_states")
    run = hooked_run("hidden_states", **FORCED).check()
    assert_results_close(run, plain)
    bert = run.module("BertModel")
    assert bert["state"] == "tuned", run.describe()
    assert "has hooks" not in run.stderr, run.stderr
    # The calls that ask for nothing are served by the engine; those that ask for hidden states or attentions
    # get what the hooks collected (compared above), whichever way they ran.
    assert max(s["engine_calls"] for s in bert["signatures"]) >= 10, bert["signatures"]


def test_modules_inside_a_collecting_call_run_eagerly_there(plain_run: PlainRun, hooked_run: HookedRun) -> None:
    """The model itself left out: its layers are tuned (ONNX Runtime, which runs no Python), and the calls that
    collect hidden states and attentions (through hooks on the layers and inside them) still get exactly what
    the plain run gets."""
    plain = plain_run("hidden_states")
    if int(plain.results["hooked_modules"]) == 0:  # type: ignore[index]
        pytest.skip("this transformers version captures hidden states without hooks")
    run = hooked_run("hidden_states", AITUNE_JIT_SKIP_MODULES="BertModel",
                     **{**FORCED, "AITUNE_JIT_BACKENDS": "ONNXRuntimeBackend"}).check()
    assert_results_close(run, plain)
    layer = run.module("BertModel.encoder.layer.0")
    assert layer["state"] == "tuned", run.describe()
    # 17 of the 24 calls collect nothing: the engine serves those after the recorded ones.
    assert max(s["engine_calls"] for s in layer["signatures"]) >= 10, layer
