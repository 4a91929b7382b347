"""Entry point of the `aitune_enable_jit_tuning` group: runs when torch is first imported.

`AUTOWRAPT_BOOTSTRAP=aitune_enable_jit_tuning python script.py` makes autowrapt register this as a post-import
hook on `torch`. autowrapt imports this module while the interpreter starts, so it lives outside
`aitune.torch` and imports nothing but the standard library: importing `aitune.torch` would import torch at
start-up, fire the hook there, and slow down every Python process that has the variable set.

A configuration error stops the script before it does anything, with one clear message and exit status 2 (not
a traceback from inside the import of torch).
"""

from __future__ import annotations

import sys
from types import ModuleType


def on_torch_import(module: ModuleType) -> None:
    from aitune.torch._errors import ConfigError
    from aitune.torch.jit._lifecycle import enable_jit_tuning

    try:
        enable_jit_tuning()
    except ConfigError as e:
        print(f"aitune: configuration error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
