"""The scenarios of NVIDIA AITune's functional JIT tests, written here as user scripts in our own code: a
ResNet-style CNN at two batch sizes with one-sample tuning and a counting forward hook, and deferred tuning with
a pinned strategy and a child that is never called. Unchanged scripts, plain vs hooked: the same results."""

from __future__ import annotations

from collections.abc import Callable

from tests.e2e.harness import ScriptRun, assert_results_close

PlainRun = Callable[[str], ScriptRun]
HookedRun = Callable[..., ScriptRun]


def test_one_sample_tuning_at_two_batch_sizes_with_a_hook(plain_run: PlainRun, hooked_run: HookedRun) -> None:
    plain = plain_run("peer_jit")
    hooked = hooked_run("peer_jit", AITUNE_MIN_SPEEDUP="1e-6").check()
    assert_results_close(hooked, plain, exact=("hook_calls", "hook_shapes"))
    entry = hooked.module("ResNetish")
    # A hook on a block keeps the whole model from being fused: the block's siblings and the block are tuned.
    tuned = [m["name"] for m in hooked.report["modules"] if m["state"] == "tuned"] if hooked.report else []
    assert tuned, hooked.describe()
    assert entry["calls"] >= 1


def test_deferred_tuning_with_a_pinned_strategy_and_an_unused_child(plain_run: PlainRun,
                                                                    hooked_run: HookedRun) -> None:
    plain = plain_run("peer_deferred")
    hooked = hooked_run("peer_deferred", AITUNE_MIN_SPEEDUP="1e-6").check()
    assert_results_close(hooked, plain, exact=("tuned_signatures",))
    entry = hooked.module("WithSpare")
    assert entry["state"] == "tuned" and entry["backend"] == "TorchInductorJitBackend", entry
    assert entry["signatures"][0]["engine_calls"] == 3, entry["signatures"]
    assert "WithSpare.spare" not in {m["name"] for m in hooked.report["modules"] if m["state"] == "tuned"}
