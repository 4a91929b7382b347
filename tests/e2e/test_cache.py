"""End-to-end: the persistent cache (`AITUNE_JIT_CACHE_DIR`) across real runs of an unchanged script.

The second run of the same script reuses each module's engine instead of tuning it again, after checking it
against eager; damaged entries, a writer killed mid-write and two processes writing at once never lead to a
wrong answer or a crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aitune.torch import cache
from aitune.torch.cache._directory import TOP_NAMES
from aitune.torch.cache._store import ENTRY_FILE
from tests.e2e.harness import BOOTSTRAP, SCRIPTS, TIMEOUT_S, ScriptRun, assert_results_close, base_env, run_script

PlainRun = Callable[[str], ScriptRun]
HookedRun = Callable[..., ScriptRun]
# Tiny CPU models time as noise on a shared 2-core machine: the reuse latency check (unit-tested on its own, with
# real engines, in tests/unit/test_saved_compile.py) must not decide whether these runs hit the cache.
LENIENT = {"AITUNE_REUSE_MAX_SLOWDOWN": "inf"}
ORT = {"AITUNE_JIT_BACKENDS": "ONNXRuntimeBackend", "AITUNE_MIN_SPEEDUP": "1e-6", **LENIENT}


def _signature(run: ScriptRun, name: str = "Net") -> dict[str, Any]:
    entry = run.module(name)
    assert entry["state"] == "tuned", f"{entry}\n{run.describe()}"
    return entry["signatures"][0]  # type: ignore[no-any-return]


def test_second_run_reuses_the_saved_engine(plain_run: PlainRun, hooked_run: HookedRun, tmp_path: Path) -> None:
    env = {**ORT, "AITUNE_JIT_CACHE_DIR": str(tmp_path / "cache")}
    first = hooked_run("cnn", **env).check()
    assert _signature(first)["cache"] == "stored"
    assert "ONNXRuntimeBackend: ok" in first.stderr and "built in" in first.stderr

    second = hooked_run("cnn", **env).check()
    assert_results_close(second, plain_run("cnn"))
    sig = _signature(second)
    assert sig["cache"] == "hit", second.describe()
    assert second.module("Net")["backend"] == "ONNXRuntimeBackend"
    # Nothing was built or timed: the engine was loaded, checked against eager on this run's samples, and used.
    assert "built in" not in second.stderr and "loaded from the cache in" in second.stderr, second.stderr
    assert "reusing the ONNXRuntimeBackend engine from the cache" in second.stderr
    # Its purity verdict came with the entry: the forward was not traced again.
    assert "not traced again" in second.stderr, second.stderr
    assert sig["engine_calls"] >= 1
    assert second.module("Net")["cache"] == "hit"
    assert "(cache hit)" in second.stderr.split("aitune summary")[-1], "the exit summary should say it"
    entries = cache.entries(tmp_path / "cache", verify=True)
    assert len(entries) == 1 and entries[0].valid and entries[0].backend == "ONNXRuntimeBackend"


def test_damaged_entry_is_rebuilt_not_trusted(plain_run: PlainRun, hooked_run: HookedRun, tmp_path: Path) -> None:
    env = {**ORT, "AITUNE_JIT_CACHE_DIR": str(tmp_path / "cache")}
    hooked_run("cnn", **env).check()
    [entry] = cache.entries(tmp_path / "cache")
    onnx_file = next((entry.path / "engine").glob("*.onnx"))
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))

    second = hooked_run("cnn", **env).check()
    assert_results_close(second, plain_run("cnn"))
    assert "not usable" in second.stderr and "does not match its recorded sha256" in second.stderr
    assert _signature(second)["cache"] == "stored", "the damaged entry should have been replaced by a fresh one"
    assert all(e.valid for e in cache.entries(tmp_path / "cache", verify=True))


def test_writer_killed_mid_write_leaves_nothing_trusted(plain_run: PlainRun, hooked_run: HookedRun,
                                                         tmp_path: Path) -> None:
    root = tmp_path / "cache"
    env = {**ORT, "AITUNE_JIT_CACHE_DIR": str(root)}
    killed = hooked_run("killed_mid_write", **env)
    assert killed.returncode == -9, killed.describe()
    assert cache.entries(root) == [], "a killed writer must not publish an entry"
    assert [p.name for p in (root / "tmp").iterdir()], "the killed writer's staging directory is expected"

    after = hooked_run("cnn", **env).check()
    assert_results_close(after, plain_run("cnn"))
    assert _signature(after)["cache"] == "stored"
    assert [e.valid for e in cache.entries(root, verify=True)] == [True]
    assert list((root / "tmp").iterdir()) == [], "the dead writer's staging directory should be cleaned up"


def _start(out_dir: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    out_dir.mkdir(parents=True)
    full = {**base_env(), "AUTOWRAPT_BOOTSTRAP": BOOTSTRAP, "AITUNE_JIT_REPORT": str(out_dir / "report.json"), **env}
    return subprocess.Popen([sys.executable, str(SCRIPTS / "cnn.py"), str(out_dir / "cnn.pt")], env=full,
                            cwd=out_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_processes_tuning_at_once_leave_a_valid_cache(plain_run: PlainRun, hooked_run: HookedRun,
                                                           tmp_path: Path) -> None:
    root = tmp_path / "cache"
    env = {**ORT, "AITUNE_JIT_CACHE_DIR": str(root)}
    procs = [_start(tmp_path / f"racer{i}", env) for i in range(2)]
    outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-6000:]
    caches = sorted(json.loads((tmp_path / f"racer{i}" / "report.json").read_text())["modules"][0]["signatures"][0]
                    ["cache"] for i in range(2))
    # Both tuned (neither found an entry when it looked), or the slower one reused the faster one's entry.
    assert caches in (["stored", "stored by another process"], ["stored", "stored"], ["hit", "stored"]), caches
    entries = cache.entries(root, verify=True)
    assert len(entries) == 1 and entries[0].valid, entries
    third = hooked_run("cnn", **env).check()
    assert _signature(third)["cache"] == "hit"
    assert_results_close(third, plain_run("cnn"))


@pytest.mark.slow
def test_inductor_second_run_reuses_the_decision(plain_run: PlainRun, hooked_run: HookedRun,
                                                                        tmp_path: Path) -> None:
    root = tmp_path / "cache"
    env = {"AITUNE_JIT_BACKENDS": "TorchInductorJitBackend,ONNXRuntimeBackend", "AITUNE_MIN_SPEEDUP": "1e-6",
           "AITUNE_JIT_CACHE_DIR": str(root), **LENIENT}
    first = hooked_run("cnn", **env).check()
    winner = first.module("Net")["backend"]
    assert _signature(first)["cache"] == "stored"
    # PyTorch's own caches (pickles and code torch loads unchecked) are left where torch keeps them.
    assert {p.name for p in root.iterdir()} <= TOP_NAMES, sorted(p.name for p in root.iterdir())

    second = hooked_run("cnn", **env).check()
    assert_results_close(second, plain_run("cnn"))
    assert _signature(second)["cache"] == "hit" and second.module("Net")["backend"] == winner
    # Only the winner was brought back: the other candidate was neither built nor timed.
    loser = ({"TorchInductorJitBackend", "ONNXRuntimeBackend"} - {winner}).pop()
    assert f"{loser}: ok" not in second.stderr, second.stderr
    assert [c["backend"] for c in second.module("Net")["candidates"]] == [winner]


def test_inductor_engine_is_saved_and_loaded_without_compiling(plain_run: PlainRun, hooked_run: HookedRun,
                                                              tmp_path: Path) -> None:
    """The torch.compile winner is saved with the decision (one size, no grad, a pure call) and the second run
    loads it: no Dynamo trace and no Inductor compile."""
    root = tmp_path / "cache"
    env = {"AITUNE_JIT_BACKENDS": "TorchInductorJitBackend", "AITUNE_MIN_SPEEDUP": "1e-6",
           "AITUNE_JIT_CACHE_DIR": str(root), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), **LENIENT}
    first = hooked_run("cnn", **env).check()
    assert _signature(first)["cache"] == "stored" and "saved with the decision" in first.stderr, first.stderr
    assert list(root.rglob("compiled_function.bin"))

    second = hooked_run("cnn", **env).check()
    assert_results_close(second, plain_run("cnn"))
    assert "loaded from the cache in" in second.stderr, second.stderr
    sig = _signature(second)
    assert sig["cache"] == "hit", second.describe()
    assert sig["cache_reuse"]["engine"] == "loaded" and sig["cache_reuse"]["kept"], sig
    assert "built in" not in second.stderr and "rebuilt" not in second.stderr, second.stderr
    assert "not traced again" in second.stderr, second.stderr  # the purity verdict came with the entry


def test_cached_engine_that_no_longer_matches_eager_is_retuned(hooked_run: HookedRun, tmp_path: Path) -> None:
    """Behaviour outside the key (here an env var the forward reads) changed: the check catches it."""
    root = tmp_path / "cache"
    env = {**ORT, "AITUNE_JIT_CACHE_DIR": str(root), "SCALE": "1.0"}
    first = hooked_run("scaled", **env).check()
    assert _signature(first, "Scaled")["cache"] == "stored"
    second = hooked_run("scaled", **{**env, "SCALE": "3.0"}).check()
    assert "does not match eager here" in second.stderr, second.stderr
    assert _signature(second, "Scaled")["cache"] == "stored"
    results = second.results
    assert results is not None
    torch_close = __import__("torch").testing.assert_close
    torch_close(results["out"], results["expected"])


# -- trust: directories aitune must not use, entries it must not load ------------------------------------------------

def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_cache_dir_set_to_the_project_directory_uses_and_deletes_nothing(plain_run: PlainRun, tmp_path: Path) -> None:
    """`AITUNE_JIT_CACHE_DIR=.` in a project that has tmp/ and torch/ folders: refused, with one warning."""
    project = tmp_path / "project"
    for name in ("tmp/run-1234-x", "tmp/" + "a" * 32 + "-999999-abcd1234", "torch/fxgraph", "data"):
        (project / name).mkdir(parents=True)
        (project / name / "keep.txt").write_text(f"user file in {name}")
        old = 1_000_000_000
        os.utime(project / name, (old, old))
    before = _snapshot(project)
    run = run_script("cnn", project, hooked=True, env={**ORT, "AITUNE_JIT_CACHE_DIR": "."}).check()
    assert_results_close(run, plain_run("cnn"))
    assert run.stderr.count("not using the cache") == 1, run.stderr
    assert f"{project} is not an aitune cache" in run.stderr and "choose another directory" in run.stderr
    after = _snapshot(project)
    assert {k: v for k, v in after.items() if k in before} == before, "a file of the user's was changed or deleted"
    assert set(after) - set(before) <= {"cnn.pt", "report.json", "report.html"}, sorted(set(after) - set(before))


@pytest.mark.parametrize("where", ["below_a_file", "in_proc"])
def test_an_impossible_cache_dir_runs_the_script_without_the_cache(plain_run: PlainRun, tmp_path: Path,
                                                                   where: str) -> None:
    (tmp_path / "a-file").write_text("x")
    path = str(tmp_path / "a-file" / "cache") if where == "below_a_file" else "/proc/aitune-nope/cache"
    run = run_script("cnn", tmp_path / "work", hooked=True, env={**ORT, "AITUNE_JIT_CACHE_DIR": path}).check()
    assert_results_close(run, plain_run("cnn"))
    assert run.stderr.count("not using the cache") == 1 and path in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert run.module("Net")["state"] == "tuned", "the script is still tuned, only without the cache"


def test_a_forged_entry_is_never_loaded(plain_run: PlainRun, hooked_run: HookedRun, tmp_path: Path) -> None:
    """Someone edits the saved engine's weights and makes every file hash in entry.json right again: the entry's
    signature no longer verifies, so it is not loaded (live confirmation is off here: the signature alone stops it).
    """
    root = tmp_path / "cache"
    env = {**ORT, "AITUNE_JIT_CACHE_DIR": str(root), "AITUNE_CONFIRM_CALLS": "0"}
    hooked_run("cnn", **env).check()
    [entry] = cache.entries(root)
    weights = entry.path / "engine" / "model.onnx.data"
    data = bytearray(weights.read_bytes())
    for i in range(3, len(data), 4):
        data[i] ^= 0x80  # flip the sign of every float32
    weights.write_bytes(bytes(data))
    record = json.loads((entry.path / ENTRY_FILE).read_text())
    record["files"] = {rel: hashlib.sha256((entry.path / rel).read_bytes()).hexdigest() for rel in record["files"]}
    (entry.path / ENTRY_FILE).write_text(json.dumps(record, indent=1, sort_keys=True))

    second = hooked_run("cnn", **env).check()
    assert_results_close(second, plain_run("cnn"))
    assert "not loading" in second.stderr and str(entry.path) in second.stderr, second.stderr
    assert _signature(second)["cache"] == "stored", "the forged entry is replaced by a fresh tuning"
    assert [e.valid for e in cache.entries(root, verify=True)] == [True]
