"""The in-place check, measured: an unchanged script whose child module is routed to an engine that is slower
inside the script than on its own, run plainly, under the hook with the check (the default), and under the hook
without it (`AITUNE_INPLACE_CHECK_CALLS=0`), one after the other on this machine.

    python benchmarks/inplace_check.py [--backend onnxruntime] [--json benchmarks/results/inplace_check_cpu.json]

The hooked runs force the child onto `--backend` (`AITUNE_JIT_BACKENDS`, `AITUNE_MIN_SPEEDUP=1e-6`, the parent
skipped), so the engine serves whether or not it was timed faster; what the check decided is read from the report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

SCRIPT = Path(__file__).parent / "scripts" / "mixed_cpu.py"


def run(extra: dict[str, str], report: Path | None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AITUNE_") and k != "AUTOWRAPT_BOOTSTRAP"}
    env.update(extra)
    if report is not None:
        env["AITUNE_JIT_REPORT"] = str(report)
    proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=900,
                          check=True)
    median = float(re.findall(r"median_ms=([0-9.]+)", proc.stdout)[-1])
    out: dict[str, Any] = {"median_ms": median}
    if report is not None:
        modules = json.loads(report.read_text())["modules"]
        for m in modules:
            for sig in m.get("signatures", []):
                if sig.get("inplace"):
                    out["inplace"] = {"module": m["name"], **sig["inplace"]}
                    out["state"] = m["state"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    hooked = {"AUTOWRAPT_BOOTSTRAP": "aitune_enable_jit_tuning", "AITUNE_JIT_BACKENDS": args.backend,
              "AITUNE_MIN_SPEEDUP": "1e-6", "AITUNE_JIT_SKIP_MODULES": "Model", "AITUNE_JIT_SUMMARY": "0"}
    with tempfile.TemporaryDirectory() as tmp:
        rows = {"plain": run({}, None),
                "hooked, in-place check on": run(hooked, Path(tmp) / "on.json"),
                "hooked, in-place check off": run({**hooked, "AITUNE_INPLACE_CHECK_CALLS": "0"},
                                                  Path(tmp) / "off.json")}
    plain = rows["plain"]["median_ms"]
    for name, row in rows.items():
        verdict = row.get("inplace", {}).get("verdict", "-")
        print(f"{name:28} {row['median_ms']:8.3f} ms  {plain / row['median_ms']:5.2f}x of plain  check: {verdict}")
    if args.json:
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
        args.json.write_text(json.dumps({"device": device, "torch": torch.__version__,
                                         "python": platform.python_version(), "backend": args.backend,
                                         "script": str(SCRIPT.name), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
