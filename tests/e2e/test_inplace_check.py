"""End-to-end: the in-place check. A child engine that serves inside its parent's own work is timed between the
script's calls, against eager, and kept or dropped; the script's outputs stay those of the plain run either way.
What the check decides depends on this machine's load, so the tests assert what it recorded, never which way."""

from __future__ import annotations

from collections.abc import Callable

from tests.e2e.harness import ScriptRun, assert_results_close

PlainRun = Callable[[str], ScriptRun]
HookedRun = Callable[..., ScriptRun]
CHILD_ON_ORT = {"AITUNE_JIT_BACKENDS": "ONNXRuntimeBackend", "AITUNE_MIN_SPEEDUP": "1e-6",
                "AITUNE_JIT_SKIP_MODULES": "Mixed"}


def _checked(run: ScriptRun) -> list[dict]:
    assert run.report is not None, run.describe()
    return [{"module": m["name"], "state": m["state"], **sig["inplace"]}
            for m in run.report["modules"] for sig in m.get("signatures", []) if sig.get("inplace")]


def test_a_child_engine_is_timed_in_place_and_kept_or_dropped(plain_run: PlainRun, hooked_run: HookedRun) -> None:
    plain = plain_run("mixed")
    hooked = hooked_run("mixed", **CHILD_ON_ORT).check()
    assert_results_close(hooked, plain)
    checked = _checked(hooked)
    # The child is checked; where it is dropped its own children are tried in its place, and checked in turn.
    assert checked and all(r["module"].startswith("Mixed.head") for r in checked), (checked, hooked.describe())
    for record in checked:
        assert record["verdict"] in ("kept", "reverted", "inconclusive"), record
        if record["verdict"] != "inconclusive":
            assert record["engine_calls"] >= 3 and record["eager_calls"] >= 3, record
            assert record["engine_period_ms"] > 0 and record["eager_period_ms"] > 0, record
        if record["verdict"] == "reverted":
            # Dropped in place: the module runs eagerly, and its reason says why with both figures.
            entry = hooked.module(record["module"])
            assert entry["state"] != "tuned" and record["why"] in entry["reason"], entry
            assert "not faster than eager" in record["why"], record
    tuned = [m["name"] for m in hooked.report["modules"] if m["state"] == "tuned"]
    assert len(tuned) <= 1, tuned  # never a module and its own child both serving engines

def test_the_check_can_be_turned_off(plain_run: PlainRun, hooked_run: HookedRun) -> None:
    plain = plain_run("mixed")
    hooked = hooked_run("mixed", AITUNE_INPLACE_CHECK_CALLS="0", **CHILD_ON_ORT).check()
    assert_results_close(hooked, plain)
    assert _checked(hooked) == []
    tuned = [m["name"] for m in hooked.report["modules"] if m["state"] == "tuned"]
    assert tuned and all(name.startswith("Mixed.head") for name in tuned), hooked.describe()
