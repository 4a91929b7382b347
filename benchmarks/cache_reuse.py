"""Second-run time-to-tuned with the persistent cache, per backend, as a fraction of the first run.

For every backend set, the unchanged script runs twice under the JIT hook with a fresh `AITUNE_JIT_CACHE_DIR`
(and a fresh `TORCHINDUCTOR_CACHE_DIR` shared by both runs, unless one is set):
the first run tunes and stores, the second should reuse. From each run's JSON report it takes the seconds spent
tuning (`tuning_seconds` summed over modules: building, checking and timing candidates, or loading and checking
a cached engine) and the script's wall time, and prints both runs side by side with the ratio.

    python benchmarks/cache_reuse.py examples/infer_cnn.py [--backends ONNXRuntimeBackend TorchInductorJitBackend]
        [--json out.json]

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


def _run(script: str, env_extra: dict[str, str], timeout: float) -> tuple[float, dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AITUNE_") and k != "AUTOWRAPT_BOOTSTRAP"}
    env.update({"AUTOWRAPT_BOOTSTRAP": "aitune_enable_jit_tuning", **env_extra})
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    report = json.loads(Path(env_extra["AITUNE_JIT_REPORT"]).read_text())
    return wall, report, proc.stderr


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    modules = [m for m in report["modules"] if m["state"] in ("tuned", "eager", "failed")]
    caches = sorted({str(s.get("cache")) for m in modules for s in m["signatures"]})
    return {"tuning_s": round(sum(m["tuning_seconds"] for m in report["modules"]), 3),
            "tuned": {m["name"]: m["backend"] for m in modules if m["state"] == "tuned"},
            "latency_ms": {m["name"]: m["tuned_latency_ms"] for m in modules if m["state"] == "tuned"},
            "cache": caches}


def bench(script: str, backends: str, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="aitune-cache-bench-") as tmp:
        env = {"AITUNE_JIT_CACHE_DIR": str(Path(tmp) / "cache")}
        # PyTorch's own caches, cold for the first run and shared by the second (aitune leaves them where torch
        # keeps them; a fresh folder here so that earlier runs on this machine do not warm the first run).
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", os.environ.get("TORCHINDUCTOR_CACHE_DIR") or
                       str(Path(tmp) / "torchinductor"))
        if backends != "default":
            env["AITUNE_JIT_BACKENDS"] = backends
        runs = []
        for i in (1, 2):
            env["AITUNE_JIT_REPORT"] = str(Path(tmp) / f"report{i}.json")
            wall, report, _ = _run(script, env, timeout)
            runs.append({"wall_s": round(wall, 2), **_summary(report)})
        device = report["environment"].get("device_name", "cpu")
    first, second = runs
    return {"script": script, "backends": backends, "device": device, "first": first, "second": second,
            "tuning_fraction": round(second["tuning_s"] / first["tuning_s"], 4) if first["tuning_s"] else None,
            "wall_fraction": round(second["wall_s"] / first["wall_s"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scripts", nargs="+")
    parser.add_argument("--backends", nargs="+", default=["default"])
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = [bench(s, b, args.timeout) for s in args.scripts for b in args.backends]
    print(f"{'script':<24} {'backends':<44} {'1st tune s':>10} {'2nd tune s':>10} {'fraction':>9} "
          f"{'1st wall s':>10} {'2nd wall s':>10}  2nd-run cache / winner")
    for r in rows:
        frac = f"{100 * r['tuning_fraction']:.1f}%" if r["tuning_fraction"] is not None else "-"
        print(f"{Path(r['script']).name:<24} {r['backends']:<44} {r['first']['tuning_s']:>10.2f} "
              f"{r['second']['tuning_s']:>10.2f} {frac:>9} {r['first']['wall_s']:>10.1f} {r['second']['wall_s']:>10.1f}"
              f"  {','.join(r['second']['cache'])} / {','.join(sorted(set(r['second']['tuned'].values()))) or '-'}")
    if rows:
        print(f"device: {rows[0]['device']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
