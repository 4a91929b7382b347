"""Run the CUDA user scripts of tests/gpu/scripts/ plain and under the JIT hook, and compare what they saved.

    python tests/gpu/run_cases.py --out DIR [--jobs N] [SCRIPT ...]

Each script runs in a fresh interpreter: plain; hooked with aitune's defaults; hooked with
`AITUNE_MIN_SPEEDUP=1e-6`, so engines serve even where they are not faster and the engine paths are exercised;
hooked with background tuning (`AITUNE_JIT_BACKGROUND=1`), the script's calls running while the worker tunes.
Results must match the plain run: float tensors within 1e-3 (1e-2 for half precision), keys holding random draws
made after the model ran bit-identical, everything else equal. Logs, reports (JSON and HTML) and a summary.json
land in DIR; the table printed at the end says, per script and variant, whether it matched, its wall time and
what was tuned. Needs a CUDA machine; the scripts know nothing about aitune unless their docstring says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

SCRIPTS = Path(__file__).parent / "scripts"
VARIANTS: dict[str, dict[str, str]] = {
    "plain": {},
    "hooked": {"AUTOWRAPT_BOOTSTRAP": "aitune_enable_jit_tuning"},
    "forced": {"AUTOWRAPT_BOOTSTRAP": "aitune_enable_jit_tuning", "AITUNE_MIN_SPEEDUP": "1e-6"},
    "background": {"AUTOWRAPT_BOOTSTRAP": "aitune_enable_jit_tuning", "AITUNE_JIT_BACKGROUND": "1"},
}


def run(script: str, variant: str, out: Path, timeout: float) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not (k.startswith("AITUNE_") or k == "AUTOWRAPT_BOOTSTRAP")}
    env.update(VARIANTS[variant])
    stem = out / f"{script}.{variant}"
    if variant != "plain":
        env.update(AITUNE_JIT_REPORT=f"{stem}.json", AITUNE_JIT_LOG_LEVEL="INFO")
    env["INSPECT_DIR"] = str(out / f"{script}.{variant}.inspect")
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(SCRIPTS / f"{script}.py"), f"{stem}.pt"], env=env, cwd=out,
                              capture_output=True, text=True, timeout=timeout)
        rc, log = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, log = 124, f"timed out after {timeout:.0f}s\n{e.stderr or ''}"
    Path(f"{stem}.log").write_text(log if isinstance(log, str) else log.decode(errors="replace"))
    return {"script": script, "variant": variant, "rc": rc, "seconds": round(time.perf_counter() - start, 1)}


def compare(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    problems = []
    if sorted(got) != sorted(want):
        return [f"keys differ: {sorted(set(got) ^ set(want))}"]
    for key, w in want.items():
        g = got[key]
        if isinstance(w, torch.Tensor):
            if not isinstance(g, torch.Tensor) or g.shape != w.shape or g.dtype != w.dtype:
                problems.append(f"{key}: {getattr(g, 'dtype', type(g))}{tuple(getattr(g, 'shape', ()))} vs "
                                f"{w.dtype}{tuple(w.shape)}")
            elif "draw_after" in key or not w.is_floating_point():
                if not torch.equal(g.cpu(), w.cpu()):
                    problems.append(f"{key}: not bit-identical")
            else:
                tol = 1e-2 if w.dtype in (torch.float16, torch.bfloat16) else 1e-3
                if not torch.allclose(g.cpu().float(), w.cpu().float(), rtol=tol, atol=tol, equal_nan=True):
                    diff = (g.cpu().float() - w.cpu().float()).abs().max().item()
                    problems.append(f"{key}: max abs difference {diff:.3g}")
        elif g != w:
            problems.append(f"{key}: {g!r} vs {w!r}")
    return problems


def shorten(names: list[str], shown: int = 6) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def tuned(report_path: Path) -> list[str]:
    if not report_path.exists():
        return ["(no report)"]
    modules = json.loads(report_path.read_text()).get("modules", [])
    return [f"{m['name']}={m.get('backend') or ''}" for m in modules if m.get("state") == "tuned"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scripts", nargs="*", help="script names (default: all)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=500)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    if "plain" not in args.variants:
        args.variants.insert(0, "plain")
    names = args.scripts or sorted(p.stem for p in SCRIPTS.glob("*.py"))
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        jobs = [(s, v) for s in names for v in args.variants]
        runs = list(pool.map(lambda sv: run(*sv, args.out, args.timeout), jobs))
    rows, failed = [], 0
    for s in names:
        mine = {r["variant"]: r for r in runs if r["script"] == s}
        plain_pt = args.out / f"{s}.plain.pt"
        want = torch.load(plain_pt, weights_only=False) if mine["plain"]["rc"] == 0 and plain_pt.exists() else None
        for v, r in mine.items():
            if v == "plain":
                r["verdict"] = "ok" if want is not None else "plain run failed"
            elif r["rc"] != 0:
                r["verdict"] = f"exited {r['rc']}"
            elif want is None:
                r["verdict"] = "no plain results"
            else:
                problems = compare(torch.load(args.out / f"{s}.{v}.pt", weights_only=False), want)
                r["verdict"] = "identical" if not problems else "DIFFERS: " + "; ".join(problems[:6])
                r["tuned"] = tuned(args.out / f"{s}.{v}.json")
            failed += r["verdict"] not in ("ok", "identical")
            rows.append(r)
    (args.out / "summary.json").write_text(json.dumps({"device": torch.cuda.get_device_name(0)
                                                       if torch.cuda.is_available() else "cpu",
                                                       "torch": torch.__version__, "runs": rows}, indent=1))
    for r in rows:
        print(f"{r['script']:14} {r['variant']:10} {r['seconds']:7.1f}s  {r['verdict']}"
              + (f"  tuned: {shorten(r['tuned'])}" if r.get("tuned") else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
