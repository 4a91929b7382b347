"""Run unchanged inference scripts with and without aitune's JIT hook, side by side, and compare.

Each script prints its steady-state latency as `median_ms=<float>` or `median latency ...: <float> ms`. For every script
this runner makes one eager run and one run with AUTOWRAPT_BOOTSTRAP=aitune_enable_jit_tuning, reads the
JSON report, and prints a table: eager vs tuned latency, speedup, what was tuned, and the wall time of each run.

    python benchmarks/run.py examples/infer_cnn.py examples/infer_bert.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: `median_ms=1.23` (benchmark scripts) or `median latency of the last 10 calls: 1.23 ms` (examples).
_MEDIAN = re.compile(r"median(?:_ms=| latency[^:\n]*: )([0-9.]+)")


def _run(script: str, env_extra: dict[str, str], timeout: float) -> tuple[float | None, float, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AITUNE_") and k != "AUTOWRAPT_BOOTSTRAP"}
    env.update(env_extra)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    found = _MEDIAN.findall(proc.stdout)
    return (float(found[-1]) if found else None), wall, proc.stderr


def bench(script: str, timeout: float, extra_env: dict[str, str], report_dir: Path | None = None) -> dict[str, Any]:
    """One plain and one hooked run of `script`; the hooked run's JSON report is kept in `report_dir` (a new
    temporary directory, kept, when None) so the path its summary prints still exists afterwards."""
    eager_ms, eager_wall, _ = _run(script, dict(extra_env), timeout)
    folder = report_dir if report_dir is not None else Path(tempfile.mkdtemp(prefix="aitune-run-"))
    folder.mkdir(parents=True, exist_ok=True)
    report_path = (folder / f"{Path(script).stem}.report.json").absolute()
    env = {"AUTOWRAPT_BOOTSTRAP": "aitune_enable_jit_tuning", "AITUNE_JIT_REPORT": str(report_path), **extra_env}
    tuned_ms, tuned_wall, stderr = _run(script, env, timeout)
    report = json.loads(report_path.read_text())
    tuned = [m for m in report["modules"] if m["state"] == "tuned"]
    return {
        "script": script,
        "device": report["environment"].get("device_name", "cpu"),
        "eager_ms": eager_ms,
        "tuned_ms": tuned_ms,
        "speedup": round(eager_ms / tuned_ms, 2) if eager_ms and tuned_ms else None,
        "tuned_modules": [f"{m['name']} -> {m['backend']}" for m in tuned],
        "wall_eager_s": round(eager_wall, 1),
        "wall_tuned_s": round(tuned_wall, 1),
        "tuning_s": round(sum(m.get("tuning_seconds", 0.0) for m in report["modules"]), 1),
        "candidates": {m["name"]: m["candidates"] for m in tuned},
        "summary": stderr[stderr.find("aitune summary"):] if "aitune summary" in stderr else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scripts", nargs="+")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE passed to both runs")
    parser.add_argument("--report-dir", type=Path, default=None,
                        help="where the hooked runs' JSON reports are kept (default: a new temporary directory)")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    results = []
    for script in args.scripts:
        r = bench(script, args.timeout, extra, args.report_dir)
        results.append(r)
        print(f"{r['script']} on {r['device']}: speedup {r['speedup']}x, the script's own steady-state latency "
              f"(median of its last calls) in a plain run, {r['eager_ms']} ms, against a run under the hook, "
              f"{r['tuned_ms']} ms, one after the other", flush=True)
        print(f"  tuned: {', '.join(r['tuned_modules']) or 'nothing'}; wall time {r['wall_eager_s']} s plain, "
              f"{r['wall_tuned_s']} s with aitune (of which tuning {r['tuning_s']} s)", flush=True)
        if r["summary"]:
            print("  aitune's own summary follows; its speedup column is its timing of each engine against eager "
                  "on the recorded inputs while tuning, not the script's end-to-end figure:", flush=True)
            print(r["summary"], flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
