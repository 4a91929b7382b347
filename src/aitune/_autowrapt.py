"""Entry point of the `aitune_enable_jit_tuning` group: runs when torch is first imported.

`AUTOWRAPT_BOOTSTRAP=aitune_enable_jit_tuning python script.py` makes autowrapt register this as a post-import
hook on `torch`. autowrapt imports this module while the interpreter starts, so it lives outside
`aitune.torch` and imports nothing but the standard library: importing `aitune.torch` would import torch at
start-up, fire the hook there, and slow down every Python process that has the variable set.

A configuration error stops the script before it does anything, with one clear message and exit status 2 (not
a traceback from inside the import of torch).

A child process of `multiprocessing` started with `spawn` or `forkserver` (DataLoader workers with such a
context, process pools) inherits the variable and imports torch afresh: the hook is not turned on there, as in a
child of `os.fork` (`aitune.torch.jit._lifecycle`), so such workers neither tune for nothing nor write the
parent's report.
"""

from __future__ import annotations

import sys
from types import ModuleType


def _multiprocessing_child() -> bool:
    """Is this a `multiprocessing` child being started (or run)? Its process object has another name than the
    main process's from the start of its preparation, before the parent's main module is imported again."""
    mp = sys.modules.get("multiprocessing")
    if mp is None:
        return False  # nothing imported multiprocessing: not a child it started
    try:
        return bool(mp.parent_process() is not None or mp.current_process().name != "MainProcess")
    except Exception:
        return False


def on_torch_import(module: ModuleType) -> None:
    if _multiprocessing_child():
        return
    from aitune.torch._errors import ConfigError
    from aitune.torch.jit._lifecycle import enable_jit_tuning

    try:
        enable_jit_tuning()
    except ConfigError as e:
        print(f"aitune: configuration error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
