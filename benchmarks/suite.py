"""The benchmark suite: unchanged inference scripts measured in one run on one machine, eager, compiled by hand in
each torch.compile mode (and channels_last where it applies), and under aitune's hook with its defaults.

    python benchmarks/suite.py --out benchmarks/results/suite_h200 [--models resnet50,bert_base,vit_b16]
        [--batches 1,32] [--modes eager,default,reduce-overhead,max-autotune-no-cudagraphs,aitune] [--iters 60]
    python benchmarks/suite.py --out benchmarks/results/suite_cpu --models bert_small,cnn_small --batches 1,8 \
        --modes eager,default,aitune --iters 40          # the CPU (fp32; no CUDA graphs there)

Each cell is a fresh interpreter running benchmarks/scripts/infer_model.py. Per cell: steady-state latency (median
of the last half of the calls, each synchronized), the time from the script's start to the end of its first fast
call (the first after its slowest whose latency is within 1.5x of the median: after the compile, or after
aitune's tuning), peak GPU memory, wall time; for aitune also its tuning seconds and what it tuned. Writes
suite.json, suite.md and, where matplotlib imports, suite.png into --out, and prints the table.

What it needs: torch, and for the models torchvision, transformers and timm; aitune installed in the same Python
(`pip install .` from this clone, plus its dependencies: pydantic-settings, wrapt, autowrapt); for the PNG
matplotlib. It downloads nothing (random weights).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

SCRIPT = Path(__file__).parent / "scripts" / "infer_model.py"
HAND = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
CONV = {"resnet50", "cnn_small"}


def _floats(name: str, text: str) -> list[float]:
    found = re.findall(rf"^{name}=(.*)$", text, re.M)
    return [float(v) for v in found[-1].split(",")] if found else []


def cell(model: str, batch: int, mode: str, channels_last: bool, iters: int, timeout: float,
         aitune_env: dict[str, str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not (k.startswith("AITUNE_") or k == "AUTOWRAPT_BOOTSTRAP")}
    env.update(BENCH_MODEL=model, BENCH_BATCH=str(batch), BENCH_ITERS=str(iters),
               BENCH_COMPILE="eager" if mode == "aitune" else mode, BENCH_CHANNELS_LAST="1" if channels_last else "0")
    report = None
    if mode == "aitune":
        report = Path(tempfile.mkdtemp(prefix="aitune-suite-")) / "report.json"
        env.update(AUTOWRAPT_BOOTSTRAP="aitune_enable_jit_tuning", AITUNE_JIT_REPORT=str(report),
                   AITUNE_JIT_SUMMARY="0", **aitune_env)
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True,
                              timeout=timeout)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired:
        rc, out, err = 124, "", f"timed out after {timeout:.0f} s"
    row: dict[str, Any] = {"model": model, "batch": batch, "mode": mode + ("+channels_last" if channels_last else ""),
                           "rc": rc, "wall_s": round(time.perf_counter() - start, 1)}
    if rc != 0:
        row["error"] = (err or out).strip().splitlines()[-1:] if (err or out).strip() else ["no output"]
        return row
    ms, ends = _floats("call_ms", out), _floats("call_end_s", out)
    median = float(re.findall(r"median_ms=([0-9.]+)", out)[-1])
    slowest = max(range(len(ms)), key=ms.__getitem__)
    fast = next((i for i in range(slowest + 1, len(ms)) if ms[i] <= 1.5 * median), None)
    row.update(median_ms=median, first_fast_call_s=round(ends[fast], 2) if fast is not None else None,
               slowest_call_ms=round(ms[slowest], 1))
    peak = re.findall(r"peak_mem_mb=([0-9.]+)", out)
    if peak:
        row["peak_mem_mb"] = float(peak[-1])
    if report is not None and report.exists():
        modules = json.loads(report.read_text())["modules"]
        row["tuning_s"] = round(sum(m.get("tuning_seconds") or 0.0 for m in modules), 1)
        row["tuned"] = [f"{m['name']}={m['backend']}" for m in modules if m["state"] == "tuned"]
        winners = [c for m in modules if m["state"] == "tuned" for c in m.get("candidates", [])
                   if c.get("backend") == (m.get("backend_description") or m.get("backend"))]
        row["candidates"] = {m["name"]: {c["backend"]: c.get("latency_ms") if c.get("ok") else c.get("error")
                                         for c in m.get("candidates", [])}
                             for m in modules if m.get("candidates")}
        row["winner_build_s"] = round(sum(c.get("build_seconds") or 0.0 for c in winners), 1) or None
    return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (model, batch): the best hand mode, aitune against it and against eager; and the issue's targets."""
    groups: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["batch"]), {})[r["mode"]] = r
    table, ratios = [], []
    for (model, batch), cells in groups.items():
        ok = {m: c for m, c in cells.items() if c.get("median_ms")}
        hand = {m: c for m, c in ok.items() if m not in ("eager", "aitune")}
        best = min(hand, key=lambda m: hand[m]["median_ms"]) if hand else None
        eager, ait = ok.get("eager"), ok.get("aitune")
        entry: dict[str, Any] = {"model": model, "batch": batch, "best_hand": best,
                                 "best_hand_ms": hand[best]["median_ms"] if best else None,
                                 "eager_ms": eager["median_ms"] if eager else None,
                                 "aitune_ms": ait["median_ms"] if ait else None}
        if ait and best:
            entry["aitune_over_best_hand"] = round(ait["median_ms"] / hand[best]["median_ms"], 3)
            ratios.append(entry["aitune_over_best_hand"])
        if ait and eager:
            entry["speedup_over_eager"] = round(eager["median_ms"] / ait["median_ms"], 2)
            if ait.get("peak_mem_mb") and eager.get("peak_mem_mb"):
                entry["peak_mem_over_eager"] = round(ait["peak_mem_mb"] / eager["peak_mem_mb"], 2)
        if ait and ait.get("first_fast_call_s") and best and hand[best].get("first_fast_call_s"):
            entry["time_to_fast_over_best_hand"] = round(ait["first_fast_call_s"] / hand[best]["first_fast_call_s"], 2)
        table.append(entry)
    geo = round(math.exp(sum(map(math.log, ratios)) / len(ratios)), 3) if ratios else None
    targets = {
        "geomean aitune/best hand <= 0.9": geo,
        "every row aitune/best hand <= 1.0": max(ratios) if ratios else None,
        "resnet50 bs1 >= 10x eager": next((e.get("speedup_over_eager") for e in table
                                           if e["model"] == "resnet50" and e["batch"] == 1), None),
        "peak memory <= 1.5x eager": max((e["peak_mem_over_eager"] for e in table if "peak_mem_over_eager" in e),
                                         default=None),
    }
    return {"rows": table, "geomean_aitune_over_best_hand": geo, "targets": targets}


def markdown(summary: dict[str, Any], rows: list[dict[str, Any]], device: str) -> str:
    lines = [f"Benchmark suite on {device} (torch {torch.__version__}); latency = median of the last half of the "
             "calls, synchronized, each cell a fresh process, all in one run.", "",
             "| model | batch | eager ms | best hand mode | best hand ms | aitune ms | aitune / best hand | "
             "x eager | peak mem / eager |", "|---|---|---|---|---|---|---|---|---|"]
    for e in summary["rows"]:
        lines.append(f"| {e['model']} | {e['batch']} | {e['eager_ms']} | {e['best_hand']} | {e['best_hand_ms']} | "
                     f"{e['aitune_ms']} | {e.get('aitune_over_best_hand')} | {e.get('speedup_over_eager')} | "
                     f"{e.get('peak_mem_over_eager')} |")
    lines += ["", f"Geometric mean of aitune / best hand: {summary['geomean_aitune_over_best_hand']}", "",
              "| cell | median ms | first fast call s | peak MB | wall s | tuning s | tuned |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} bs{r['batch']} {r['mode']} | {r.get('median_ms', r.get('error'))} | "
                     f"{r.get('first_fast_call_s')} | {r.get('peak_mem_mb')} | {r['wall_s']} | "
                     f"{r.get('tuning_s', '')} | {', '.join(r.get('tuned', []))} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    groups = sorted({(r["model"], r["batch"]) for r in rows})
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    width = 0.8 / max(1, len(modes))
    for j, mode in enumerate(modes):
        values = [next((r.get("median_ms") or 0 for r in rows if (r["model"], r["batch"]) == g and r["mode"] == mode),
                       0) for g in groups]
        ax.bar([i + j * width for i in range(len(groups))], values, width, label=mode)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], [f"{m} bs{b}" for m, b in groups])
    ax.set_ylabel("latency, ms (lower is better)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", default="resnet50,bert_base,vit_b16")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--modes", default="eager," + ",".join(HAND) + ",aitune")
    parser.add_argument("--no-channels-last", action="store_true", help="skip the channels_last hand variants")
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--aitune-env", action="append", default=[], help="KEY=VALUE for the aitune runs only")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    aitune_env = dict(item.split("=", 1) for item in args.aitune_env)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    rows = []
    for model in args.models.split(","):
        for batch in map(int, args.batches.split(",")):
            for mode in args.modes.split(","):
                variants = [False] + ([True] if model in CONV and mode in HAND and not args.no_channels_last else [])
                for cl in variants:
                    row = cell(model, batch, mode, cl, args.iters, args.timeout, aitune_env)
                    rows.append(row)
                    print(f"{model} bs{batch} {row['mode']:36} {row.get('median_ms', row.get('error'))} ms  "
                          f"first fast call {row.get('first_fast_call_s')} s  peak {row.get('peak_mem_mb')} MB  "
                          f"{' '.join(row.get('tuned', []))}", flush=True)
    summary = summarize(rows)
    result = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
              "date": time.strftime("%Y-%m-%d"), "iters": args.iters, "cells": rows, **summary}
    (args.out / "suite.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "suite.md").write_text(markdown(summary, rows, device))
    drew = plot(rows, args.out / "suite.png")
    print(markdown(summary, rows, device))
    print(f"wrote {args.out}/suite.json, suite.md" + (", suite.png" if drew else " (no PNG: matplotlib missing)"))


if __name__ == "__main__":
    main()
