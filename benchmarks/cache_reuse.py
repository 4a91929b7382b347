"""Second-run time-to-tuned with the persistent cache, per backend, as a fraction of the first run.

For every backend set, the unchanged script runs twice under the JIT hook with a fresh `AITUNE_JIT_CACHE_DIR`
(and a fresh `TORCHINDUCTOR_CACHE_DIR` shared by both runs, unless one is set):
the first run tunes and stores, the second should reuse. From each run's JSON report it takes the seconds spent
tuning (`tuning_seconds` summed over modules: building, checking and timing candidates, or loading and checking
a cached engine) and the script's wall time, and prints both runs side by side with the ratio. When the script
prints them (benchmarks/scripts/infer_model.py does), it also takes the steady latency (`median_ms=`), the
output checksum (`checksum=`) and the seconds from the script's start to the end of each call (`call_end_s=`).

    python benchmarks/cache_reuse.py examples/infer_cnn.py [--backends ONNXRuntimeBackend TorchInductorJitBackend]
        [--env BENCH_MODEL=resnet50 ...] [--rebuild-run] [--json out.json]

`--rebuild-run` adds a third run on the same caches in which saved torch.compile functions are not loaded (the
engine is rebuilt from the cached decision, as before such functions were saved): the fallback's figures.
Backend sets are comma lists of registered names (`default` for the device's default candidates).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: Runs the script with saved torch.compile functions refused, so the cached decision's engine is rebuilt.
_NO_SAVED = (
    "import runpy, sys\n"
    "from aitune.torch.backend import TorchInductorJitBackend\n"
    "def refuse(*a, **k):\n"
    "    raise RuntimeError('benchmark: saved functions not loaded in this run')\n"
    "TorchInductorJitBackend.load = refuse\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def _run(script: str, env_extra: dict[str, str], timeout: float, *, no_saved: bool = False
         ) -> tuple[float, dict[str, Any], str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AITUNE_") and k != "AUTOWRAPT_BOOTSTRAP"}
    env.update({"AUTOWRAPT_BOOTSTRAP": "aitune_enable_jit_tuning", **env_extra})
    command = [sys.executable, "-c", _NO_SAVED, script] if no_saved else [sys.executable, script]
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    report = json.loads(Path(env_extra["AITUNE_JIT_REPORT"]).read_text())
    return wall, report, proc.stderr, proc.stdout


def _printed(stdout: str) -> dict[str, Any]:
    """What the script printed about itself (see the module docstring; `call_ms=` too)."""
    found: dict[str, Any] = {}
    for line in stdout.splitlines():
        key, _, value = line.partition("=")
        if key in ("median_ms", "checksum", "peak_mem_mb"):
            found[key] = float(value)
        elif key in ("call_end_s", "call_ms"):
            found[key] = [float(v) for v in value.split(",")]
    return found


def _first_fast_call_s(printed: dict[str, Any]) -> float | None:
    """Seconds from the script's start to the end of the first call after the slowest one (the one that tuned or
    loaded) that ran within 1.5x the steady latency, as benchmarks/suite.py counts it."""
    ms, ends, median = printed.get("call_ms"), printed.get("call_end_s"), printed.get("median_ms")
    if not ms or not ends or not median:
        return None
    slowest = max(range(len(ms)), key=ms.__getitem__)
    fast = next((i for i in range(slowest + 1, len(ms)) if ms[i] <= 1.5 * median), None)
    return round(ends[fast], 3) if fast is not None else None


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    modules = [m for m in report["modules"] if m["state"] in ("tuned", "eager", "failed")]
    caches = sorted({str(s.get("cache")) for m in modules for s in m["signatures"]})
    return {"tuning_s": round(sum(m["tuning_seconds"] for m in report["modules"]), 3),
            "tuned": {m["name"]: m["backend"] for m in modules if m["state"] == "tuned"},
            "latency_ms": {m["name"]: m["tuned_latency_ms"] for m in modules if m["state"] == "tuned"},
            "cache": caches,
            "cache_reuse": [s["cache_reuse"] for m in modules for s in m["signatures"] if s.get("cache_reuse")]}


def bench(script: str, backends: str, timeout: float, script_env: dict[str, str], rebuild_run: bool
          ) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="aitune-cache-bench-") as tmp:
        env = {**script_env, "AITUNE_JIT_CACHE_DIR": str(Path(tmp) / "cache")}
        # PyTorch's own caches, cold for the first run and shared by the second (aitune leaves them where torch
        # keeps them; a fresh folder here so that earlier runs on this machine do not warm the first run).
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", os.environ.get("TORCHINDUCTOR_CACHE_DIR") or
                       str(Path(tmp) / "torchinductor"))
        if backends != "default":
            env["AITUNE_JIT_BACKENDS"] = backends
        runs = []
        for i, no_saved in enumerate([False, False] + ([True] if rebuild_run else []), start=1):
            env["AITUNE_JIT_REPORT"] = str(Path(tmp) / f"report{i}.json")
            wall, report, stderr, stdout = _run(script, env, timeout, no_saved=no_saved)
            printed = _printed(stdout)
            runs.append({"wall_s": round(wall, 2), **_summary(report),
                         "log": [line for line in stderr.splitlines() if line.startswith("[aitune]")][:40],
                         "first_fast_call_s": _first_fast_call_s(printed),
                         **{k: v for k, v in printed.items() if k not in ("call_end_s", "call_ms")}})
        device = report["environment"].get("device_name", "cpu")
    first, second = runs[0], runs[1]
    row = {"script": script, "env": script_env, "backends": backends, "device": device, "first": first,
           "second": second,
           "tuning_fraction": round(second["tuning_s"] / first["tuning_s"], 4) if first["tuning_s"] else None,
           "wall_fraction": round(second["wall_s"] / first["wall_s"], 4)}
    if "median_ms" in first and "median_ms" in second:
        row["latency_ratio"] = round(second["median_ms"] / first["median_ms"], 4)
    if rebuild_run:
        row["rebuilt"] = runs[2]
        row["rebuilt_tuning_fraction"] = round(runs[2]["tuning_s"] / first["tuning_s"], 4) if first["tuning_s"] \
            else None
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scripts", nargs="+")
    parser.add_argument("--backends", nargs="+", default=["default"])
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--json", default=None)
    parser.add_argument("--env", nargs="*", default=[], help="KEY=VALUE for the script (e.g. BENCH_MODEL=resnet50)")
    parser.add_argument("--rebuild-run", action="store_true", help="a third run that rebuilds instead of loading")
    args = parser.parse_args()
    script_env = dict(item.split("=", 1) for item in args.env)
    rows = [bench(s, b, args.timeout, script_env, args.rebuild_run) for s in args.scripts for b in args.backends]
    print(f"{'script':<24} {'backends':<30} {'1st tune s':>10} {'2nd tune s':>10} {'fraction':>9} "
          f"{'1st ms':>8} {'2nd ms':>8} {'1st wall s':>10} {'2nd wall s':>10}  2nd-run cache / winner")
    for r in rows:
        frac = f"{100 * r['tuning_fraction']:.1f}%" if r["tuning_fraction"] is not None else "-"
        name = Path(r["script"]).name + "".join(f" {v}" for k, v in r["env"].items() if k == "BENCH_MODEL")
        ms = [f"{x['median_ms']:>8.3f}" if "median_ms" in x else f"{'-':>8}" for x in (r["first"], r["second"])]
        print(f"{name:<24} {r['backends']:<30} {r['first']['tuning_s']:>10.2f} "
              f"{r['second']['tuning_s']:>10.2f} {frac:>9} {ms[0]} {ms[1]} {r['first']['wall_s']:>10.1f} "
              f"{r['second']['wall_s']:>10.1f}  {','.join(r['second']['cache'])} / "
              f"{','.join(sorted(set(r['second']['tuned'].values()))) or '-'}")
        if "rebuilt" in r:
            b = r["rebuilt"]
            print(f"{'  (rebuilt, not loaded)':<24} {'':<30} {'':>10} {b['tuning_s']:>10.2f} "
                  f"{100 * (r['rebuilt_tuning_fraction'] or 0):>8.1f}% {'':>8} "
                  f"{b.get('median_ms', float('nan')):>8.3f} {'':>10} {b['wall_s']:>10.1f}")
    if rows:
        print(f"device: {rows[0]['device']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
