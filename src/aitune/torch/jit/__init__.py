"""Zero-code JIT tuning.

Enable with `AUTOWRAPT_BOOTSTRAP=aitune_enable_jit_tuning python script.py`, or `import aitune.torch.jit.enable`.
Settings: `aitune.torch.jit.config.config`. Deferred tuning: `aitune.torch.jit.tune.deferred()`.
"""

from aitune.torch._signature._background import wait
from aitune.torch.jit._entry import (
    enable_inspection,
    patch_for_jit_tuning,
    prepare_for_jit_tuning,
    print_hierarchy,
)
from aitune.torch.jit._lifecycle import disable_jit_tuning, enable_jit_tuning, is_enabled

__all__ = ["disable_jit_tuning", "enable_inspection", "enable_jit_tuning", "is_enabled", "patch_for_jit_tuning",
           "prepare_for_jit_tuning", "print_hierarchy", "wait"]
