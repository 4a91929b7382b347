"""The JSON report (written atomically after every decision and at exit) and the summary table on stderr."""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

import aitune
from aitune.torch.jit import _hook, _tracker
from aitune.torch.jit._tracker import ModuleState
from aitune.torch.jit.config import SETTINGS

logger = logging.getLogger(__name__)

REPORT_VERSION = 1


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {
        "aitune": aitune.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cuda_available": torch.cuda.is_available(),
        "mode": SETTINGS.mode,
    }
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["device_name"] = torch.cuda.get_device_name(0)
    return env


def _module_entry(st: ModuleState) -> dict[str, Any]:
    sigs = list(st.signatures.values())
    main = st.tuned_signature() or (max(sigs, key=lambda s: s.calls) if sigs else None)
    state = st.report_state()
    backend = main.backend if main is not None and main.status == "tuned" else None
    described = main.backend_description if backend is not None and main is not None else None
    reason = st.reason
    if reason is None and main is not None and main.status != "tuned":
        reason = main.reason
    eager = main.eager_latency_ms if main is not None else None
    tuned = main.tuned_latency_ms if main is not None and main.status == "tuned" else None
    return {
        "name": st.name,
        "class": st.qualname,
        "state": state,
        "backend": backend,
        "backend_description": described,
        "reason": reason,
        "calls": st.calls,
        "eager_latency_ms": None if eager is None else round(eager, 4),
        "tuned_latency_ms": None if tuned is None else round(tuned, 4),
        "speedup": round(eager / tuned, 3) if eager and tuned else None,
        "depth": st.depth,
        "parent": st.parent.name if st.parent is not None else None,
        "tuning_seconds": round(st.tune_seconds, 3),
        "recorded_eager_ms": (round(statistics.median(main.recorded_ms), 4)
                              if main is not None and main.recorded_ms else None),
        "cache": main.cache if main is not None else None,
        "signatures": [s.to_report() for s in sigs],
        "repeated": dict(st.repeats),
        "candidates": list(main.candidates) if main is not None else [],
    }


def _reported(st: ModuleState) -> bool:
    if st.status in ("untracked", "pending"):
        return False
    if st.status == "detached":
        # Only the first level under the tuned module, to keep the report readable.
        return st.parent is not None and st.parent.report_state() == "tuned"
    return True


def build_report() -> dict[str, Any]:
    with _tracker.LOCK:
        modules = [_module_entry(st) for st in _tracker.tracked_states() if _reported(st)]
    return {"version": REPORT_VERSION, "environment": environment(), "modules": modules}


def write_report(path: Path | str | None = None) -> Path | None:
    """Write the report atomically (a reader never sees a half-written file). Returns the path written."""
    target = Path(path) if path is not None else SETTINGS.report
    if target is None:
        return None
    data = build_report()
    target = target.expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if target.suffix == ".json":
        write_html(data, target.with_suffix(".html"))
    return target


def write_html(data: dict[str, Any], target: Path) -> Path:
    """The report as one self-contained HTML page beside the JSON (`_html`), written atomically."""
    from aitune.torch.jit._html import render

    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(render(data))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _graphs_compiled_by_the_script() -> int:
    """Graphs torch.compile made in this process: with no module recorded by aitune, the script's own (a model it
    compiled: `OptimizedModule.__call__` does not go through the patched `Module.__call__`)."""
    dynamo_utils = sys.modules.get("torch._dynamo.utils")
    try:
        return int(dynamo_utils.counters["stats"]["unique_graphs"]) if dynamo_utils is not None else 0
    except Exception:
        return 0


def _fmt_ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def summary_table(report: dict[str, Any] | None = None) -> str:
    report = report if report is not None else build_report()
    modules = [m for m in report["modules"] if m["state"] != "detached"]
    env = report["environment"]
    device = env.get("device_name", "cpu")
    lines = [f"aitune summary (mode {env['mode']}, {device}):"]
    if not modules:
        compiled = _graphs_compiled_by_the_script()
        if compiled:
            lines.append(f"  no module was recorded: the script's modules ran under its own torch.compile "
                         f"({compiled} graph(s) compiled), which aitune leaves as it is (run it without "
                         "torch.compile to have aitune tune it)")
        else:
            lines.append("  no module was recorded (were any modules called in eval mode?)")
        return "\n".join(lines)
    header = ("module", "state", "backend", "calls", "eager ms", "tuned ms", "speedup", "tuning s")
    rows = [header]
    for m in modules:
        speed = f"{m['speedup']:.2f}x" if m.get("speedup") else "-"
        reused = {"hit": " (cache hit)", "shared": " (shared)"}.get(m.get("cache") or "", "")
        tuning = f"{m['tuning_seconds']:.1f}{reused}"
        rows.append((m["name"], m["state"], m.get("backend_description") or m["backend"] or "-", str(m["calls"]),
                     _fmt_ms(m["eager_latency_ms"]), _fmt_ms(m["tuned_latency_ms"]), speed, tuning))
    widths = [min(max(len(r[i]) for r in rows), 56) for i in range(len(header))]
    for r in rows:
        cells = [c[: widths[i]].ljust(widths[i]) if i < 3 else c.rjust(widths[i]) for i, c in enumerate(r)]
        lines.append("  " + "  ".join(cells).rstrip())
    for m in modules:
        if m["state"] in ("eager", "failed", "recording") and m["reason"] and m["depth"] == 0:
            lines.append(f"  {m['name']}: {m['reason'][:200]}")
    for m in modules:
        for what, times in (m.get("repeated") or {}).items():
            if times > 1:
                lines.append(f"  {m['name']}: {what} {times} times (its samples or engine dropped each time)")
    return "\n".join(lines)


def at_exit() -> None:
    """Write the report and print the summary; never raises (the interpreter is shutting down)."""
    try:
        report = build_report()
        if not report["modules"] and not _hook.is_installed():
            return  # disabled before exit, nothing to say
        path = SETTINGS.report
        if path is not None:
            write_report(path)
        if SETTINGS.summary and not SETTINGS.silenced:
            text = summary_table(report)
            if path is not None:
                text += f"\n  report: {path}"
            print(text, file=sys.stderr, flush=True)
    except Exception:  # at interpreter exit nothing may raise; the user gets one line instead
        logger.debug("writing the aitune report failed", exc_info=True)
        print("aitune: could not write the report (run with AITUNE_JIT_LOG_LEVEL=DEBUG for details)",
              file=sys.stderr)
