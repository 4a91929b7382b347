"""`python -m aitune doctor`: will the JIT hook turn on in this environment, and if not, why not?

The hook turns on through a chain, and any broken link leaves a script running eagerly with nothing said:
autowrapt's start-up file (`autowrapt-init.pth`) must sit in a site directory this interpreter processes (not
under `python -S`; `python -I` and `-E` ignore environment variables); `AUTOWRAPT_BOOTSTRAP` must name
`aitune_enable_jit_tuning`; aitune's entry point must be registered in that group (an installed aitune). The
doctor checks each link, then starts a child interpreter with the variable set and asks it whether JIT tuning
came on when torch was imported. The sign in a real run is aitune's start-up line on stderr: `[aitune] JIT tuning
enabled (...)`.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
import site
import subprocess
import sys
from pathlib import Path

GROUP = "aitune_enable_jit_tuning"
_PROBE = ("import torch\nfrom aitune.torch.jit import is_enabled\nprint('aitune-hook-on' if is_enabled() else "
          "'aitune-hook-off')\n")


def _site_dirs() -> list[Path]:
    dirs = [Path(p) for p in site.getsitepackages()] if hasattr(site, "getsitepackages") else []
    user = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
    if user:
        dirs.append(Path(user))
    return dirs


def checks() -> list[tuple[bool, str]]:
    """(ok, what) for each link of the chain, in order."""
    found: list[tuple[bool, str]] = []
    try:
        version = importlib.metadata.version("aitune")
    except importlib.metadata.PackageNotFoundError:
        version = None
    found.append((version is not None, f"aitune {version} is installed" if version else
                  "aitune is not installed as a package (no entry point without it): pip install -e ."))
    points = [ep for ep in importlib.metadata.entry_points(group=GROUP)]
    found.append((bool(points), f"entry point group {GROUP!r}: {', '.join(f'{e.name} = {e.value}' for e in points)}"
                  if points else f"no entry point is registered in the group {GROUP!r} (reinstall aitune)"))
    pth = [d / "autowrapt-init.pth" for d in _site_dirs() if (d / "autowrapt-init.pth").is_file()]
    found.append((bool(pth), f"autowrapt's start-up file: {pth[0]}" if pth else
                  "autowrapt's start-up file (autowrapt-init.pth) is in no site directory: pip install autowrapt"))
    found.append((not sys.flags.no_site, "this interpreter processes site directories" if not sys.flags.no_site
                  else "this interpreter runs with -S: start-up files are not processed, the hook cannot turn on"))
    found.append((not sys.flags.ignore_environment,
                  "environment variables are read" if not sys.flags.ignore_environment else
                  "this interpreter runs with -E or -I: AUTOWRAPT_BOOTSTRAP is ignored"))
    value = os.environ.get("AUTOWRAPT_BOOTSTRAP")
    names = [n.strip() for n in (value or "").split(",") if n.strip()]
    if value is None:
        found.append((False, f"AUTOWRAPT_BOOTSTRAP is not set: run AUTOWRAPT_BOOTSTRAP={GROUP} python script.py"))
    elif GROUP in names:
        found.append((True, f"AUTOWRAPT_BOOTSTRAP={value}"))
    else:
        close = difflib.get_close_matches(GROUP, names, n=1)
        hint = f" (did you mean {GROUP!r} for {close[0]!r}?)" if close else f" (it must name {GROUP!r})"
        found.append((False, f"AUTOWRAPT_BOOTSTRAP={value!r} does not name aitune's group{hint}"))
    env = {**os.environ, "AUTOWRAPT_BOOTSTRAP": GROUP, "AITUNE_JIT_LOG_LEVEL": "OFF", "AITUNE_JIT_SUMMARY": "0"}
    env.pop("AITUNE_JIT_REPORT", None)
    try:
        child = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)
        on = "aitune-hook-on" in child.stdout
        detail = child.stdout.strip() + child.stderr.strip()[-500:]
    except Exception as e:  # the probe interpreter could not run at all
        on, detail = False, f"{type(e).__name__}: {e}"
    found.append((on, f"a child interpreter ({sys.executable}) with AUTOWRAPT_BOOTSTRAP={GROUP} turned JIT tuning "
                  "on when torch was imported" if on else
                  f"a child interpreter with AUTOWRAPT_BOOTSTRAP={GROUP} did not turn JIT tuning on: {detail}"))
    return found


def main(argv: list[str]) -> int:
    if argv[:1] != ["doctor"]:
        print("usage: python -m aitune doctor    (will the JIT hook turn on here, and if not, why not)",
              file=sys.stderr)
        return 2
    results = checks()
    for ok, what in results:
        print(f"  {'ok ' if ok else 'NO '} {what}")
    if all(ok for ok, _ in results):
        print("aitune: the JIT hook will turn on for scripts run here with "
              f"AUTOWRAPT_BOOTSTRAP={GROUP}; its sign is the line '[aitune] JIT tuning enabled' on stderr")
        return 0
    print("aitune: the JIT hook will not turn on as things stand; see the NO lines above")
    return 1
