"""`import aitune.torch.jit.enable` turns JIT tuning on: the one-line alternative to the env var."""

from aitune.torch.jit._lifecycle import enable_jit_tuning

enable_jit_tuning()

__all__ = ["enable_jit_tuning"]
