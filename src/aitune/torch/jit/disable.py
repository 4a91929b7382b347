"""`import aitune.torch.jit.disable` turns JIT tuning off and restores torch.nn.Module.__call__ exactly.

An import runs once per process; call `aitune.torch.jit.disable_jit_tuning()` to disable again later.
"""

from aitune.torch.jit._lifecycle import disable_jit_tuning

disable_jit_tuning()

__all__ = ["disable_jit_tuning"]
