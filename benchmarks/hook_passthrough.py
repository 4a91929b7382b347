"""The hook's pass-through cost: what a module that aitune does not tune pays per call, through the patched
`torch.nn.Module.__call__`, against the same call with the hook off. Public API only, so that two versions of
aitune can be compared side by side (`--compare OTHER_SRC` runs this file against another checkout's `src/` in
alternating subprocesses and prints both).

    python benchmarks/hook_passthrough.py                      # this checkout
    python benchmarks/hook_passthrough.py --compare /tmp/old/src --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _per_call_ns(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - t0) / n


def measure(n: int, rounds: int = 25) -> dict[str, float]:
    """Blocks of `n` calls with the hook off and on, interleaved `rounds` times; the fastest block of each (the
    least disturbed) gives the per-call figures."""
    import torch

    import aitune.torch.jit as jit

    ident = torch.nn.Identity()
    x = torch.zeros(1, 4)
    off: list[float] = []
    on: list[float] = []
    with torch.no_grad():
        for _ in range(rounds):
            jit.disable_jit_tuning()
            off.append(_per_call_ns(lambda: ident(x), n))
            jit.enable_jit_tuning()
            ident(x)  # too few parameters to track (min_parameters): it passes through from here on
            on.append(_per_call_ns(lambda: ident(x), n))
    jit.disable_jit_tuning()
    return {"identity_off_ns": min(off), "identity_on_ns": min(on), "passthrough_cost_ns": min(on) - min(off)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=50000)
    parser.add_argument("--compare", default=None, help="another checkout's src/ to measure side by side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.calls)))
        return
    if args.compare is None:
        os.environ.setdefault("AITUNE_JIT_LOG_LEVEL", "OFF")
        result = measure(args.calls)
        print(" ".join(f"{k}={v:.0f}" for k, v in result.items()))
        return
    here = str(Path(__file__).resolve().parents[1] / "src")
    env_base = {k: v for k, v in os.environ.items() if not k.startswith("AITUNE_") and k != "AUTOWRAPT_BOOTSTRAP"}
    env_base["AITUNE_JIT_LOG_LEVEL"] = "OFF"
    env_base["AITUNE_JIT_SUMMARY"] = "0"
    runs: dict[str, list[float]] = {"this": [], "other": []}
    for _ in range(args.rounds):
        for label, src in (("other", args.compare), ("this", here)):
            env = {**env_base, "PYTHONPATH": src}
            out = subprocess.run([sys.executable, __file__, "--child", "--calls", str(args.calls)], env=env,
                                 capture_output=True, text=True, check=True).stdout
            runs[label].append(json.loads(out.strip().splitlines()[-1])["passthrough_cost_ns"])
    summary = {label: {"median_ns": statistics.median(v), "runs_ns": [round(x) for x in v]}
               for label, v in runs.items()}
    ratio = summary["this"]["median_ns"] / summary["other"]["median_ns"]
    print(f"pass-through cost per call: this {summary['this']['median_ns']:.0f} ns, other ({args.compare}) "
          f"{summary['other']['median_ns']:.0f} ns; ratio {ratio:.3f} (medians of {args.rounds} alternating runs)")
    if args.json:
        Path(args.json).write_text(json.dumps({**summary, "ratio": ratio, "other_src": args.compare}, indent=1))


if __name__ == "__main__":
    main()
