"""Background tuning against blocking tuning: the per-call latency trace of one unchanged script, side by side.

For each model, in one run on one machine, benchmarks/scripts/infer_model.py runs
1. plainly (no aitune): the eager median and the eager trace;
2. under the JIT hook, blocking (the default): the call that completes the recording tunes;
3. under the JIT hook with `AITUNE_JIT_BACKGROUND=1`, calling for as long as blocking mode took to reach its tuned
   latency, twice over, plus 15 s;
4. the same again on the cache that run 3 stored (a cache hit, loaded in the background), unless --no-second.
Each aitune run gets its own fresh aitune cache and TorchInductor cache (run 4 shares run 3's), so no run warms
another. From each trace:
- steady: the median of the last fifth of the calls;
- tuned at: the end of the first call of the first 20 consecutive calls all within 1.25x steady, in seconds from
  the start of the first call (for a run left eager this is where its latency settled);
- while tuning: the calls after the first and before "tuned at": their slowest, their 99th percentile, and how
  many took over 2x the eager median (the target: none).

    python benchmarks/background.py [--models resnet50 bert_base] [--batch 1] [--json out.json] [--no-second]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parent / "scripts" / "infer_model.py"
RUN_OF_FAST = 20


def _run(env_extra: dict[str, str], hooked: bool, timeout: float) -> tuple[dict[str, Any], dict[str, Any] | None,
                                                                          list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AITUNE_") and k != "AUTOWRAPT_BOOTSTRAP"}
    env.update(env_extra)
    if hooked:
        env["AUTOWRAPT_BOOTSTRAP"] = "aitune_enable_jit_tuning"
    proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{SCRIPT} failed ({proc.returncode}) with {env_extra}:\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-6000:]}")
    printed: dict[str, Any] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        if key in ("median_ms", "checksum", "peak_mem_mb"):
            printed[key] = float(value)
        elif key in ("call_end_s", "call_ms"):
            printed[key] = [float(v) for v in value.split(",")]
    report = json.loads(Path(env["AITUNE_JIT_REPORT"]).read_text()) if hooked else None
    log = [line for line in proc.stderr.splitlines() if line.startswith("[aitune]")]
    return printed, report, log


def trace_figures(ms: list[float], ends: list[float], eager_median: float) -> dict[str, Any]:
    """What the module docstring lists, from one run's per-call latencies and end times."""
    start = ends[0] - ms[0] / 1000
    steady = statistics.median(ms[-max(1, len(ms) // 5):])
    limit = 1.25 * steady
    tuned = next((i for i in range(1, len(ms) - RUN_OF_FAST) if all(t <= limit for t in ms[i:i + RUN_OF_FAST])),
                 None)
    window = ms[1:tuned] if tuned is not None else ms[1:]
    ordered = sorted(window)
    return {
        "calls": len(ms),
        "steady_ms": round(steady, 4),
        "tuned_at_call": tuned,
        "tuned_at_s": round(ends[tuned] - start, 3) if tuned is not None else None,
        "while_tuning_calls": len(window),
        "while_tuning_max_ms": round(max(window), 3) if window else None,
        "while_tuning_p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))], 3) if ordered else None,
        "while_tuning_max_vs_eager": round(max(window) / eager_median, 2) if window else None,
        "calls_over_2x_eager": sum(1 for t in window if t > 2 * eager_median),
        "slowest_calls": sorted(((round(t, 2), i + 1) for i, t in enumerate(window)), reverse=True)[:5],
    }


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    modules = [m for m in report["modules"] if m["state"] in ("tuned", "eager", "failed")]
    return {"tuning_s": round(sum(m["tuning_seconds"] for m in report["modules"]), 3),
            "tuned": {m["name"]: m["backend_description"] for m in modules if m["state"] == "tuned"},
            "cache": sorted({str(s.get("cache")) for m in modules for s in m["signatures"]}),
            "timing": [s.get("timing") for m in modules for s in m["signatures"] if s.get("timing")][:3]}


def bench(model: str, batch: int, timeout: float, second: bool) -> dict[str, Any]:
    base = {"BENCH_MODEL": model, "BENCH_BATCH": str(batch), "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="aitune-bg-bench-") as tmp:
        plain, _, _ = _run({**base, "BENCH_ITERS": "300"}, False, timeout)
        eager = statistics.median(plain["call_ms"][len(plain["call_ms"]) // 2:])
        row: dict[str, Any] = {"model": model, "batch": batch, "eager_median_ms": round(eager, 4),
                               "plain": trace_figures(plain["call_ms"], plain["call_end_s"], eager)}

        def hooked(name: str, extra: dict[str, str], cache: str) -> dict[str, Any]:
            env = {**base, **extra, "AITUNE_JIT_CACHE_DIR": str(Path(tmp) / cache / "aitune"),
                   "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / cache / "inductor"),
                   "AITUNE_JIT_REPORT": str(Path(tmp) / f"{name}.json")}
            printed, report, log = _run(env, True, timeout)
            assert report is not None
            return {**trace_figures(printed["call_ms"], printed["call_end_s"], eager), **_summary(report),
                    "checksum": printed.get("checksum"), "peak_mem_mb": printed.get("peak_mem_mb"),
                    "log": log[:30]}

        row["blocking"] = hooked("blocking", {"BENCH_ITERS": "300"}, "blocking")
        reach = row["blocking"]["tuned_at_s"] or 60.0
        seconds = f"{2 * reach + 15:.0f}"
        row["background"] = hooked("background", {"BENCH_ITERS": "300", "BENCH_SECONDS": seconds,
                                                  "AITUNE_JIT_BACKGROUND": "1"}, "background")
        if second:
            row["background_cache_hit"] = hooked("background2", {"BENCH_ITERS": "300", "BENCH_SECONDS": seconds,
                                                                 "AITUNE_JIT_BACKGROUND": "1"}, "background")
    bg, bl = row["background"], row["blocking"]
    row["plain_checksum"] = plain.get("checksum")
    if bg["tuned_at_s"] and bl["tuned_at_s"]:
        row["tuned_at_ratio"] = round(bg["tuned_at_s"] / bl["tuned_at_s"], 3)
    row["steady_ratio"] = round(bg["steady_ms"] / bl["steady_ms"], 4)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "bert_base"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-second", action="store_true", help="skip the cache-hit run")
    args = parser.parse_args()
    rows = []
    for model in args.models:
        rows.append(bench(model, args.batch, args.timeout, not args.no_second))
        if args.json:  # what is done so far survives a run cut short
            Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"{'model':<10} {'run':<20} {'tuned at s':>10} {'steady ms':>9} {'max while tuning':>16} "
          f"{'p99':>7} {'>2x eager':>9}  winner")
    for r in rows:
        print(f"{r['model']:<10} {'eager (plain)':<20} {'':>10} {r['eager_median_ms']:>9.3f}")
        for key in ("blocking", "background", "background_cache_hit"):
            x = r.get(key)
            if x is None:
                continue
            at = f"{x['tuned_at_s']:.2f}" if x["tuned_at_s"] is not None else "-"
            worst = f"{x['while_tuning_max_ms']:.2f} ({x['while_tuning_max_vs_eager']}x)" \
                if x["while_tuning_max_ms"] is not None else "-"
            p99 = f"{x['while_tuning_p99_ms']:.2f}" if x["while_tuning_p99_ms"] is not None else "-"
            print(f"{'':<10} {key:<20} {at:>10} {x['steady_ms']:>9.3f} {worst:>16} {p99:>7} "
                  f"{x['calls_over_2x_eager']:>9}  {','.join(sorted(set(x['tuned'].values()))) or '-'}")
        print(f"{'':<10} background/blocking: tuned at {r.get('tuned_at_ratio')}x, steady {r['steady_ratio']}x")


if __name__ == "__main__":
    main()
