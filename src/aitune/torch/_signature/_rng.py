"""aitune's own runs leave the script's random number generators as they found them.

Tuning runs the module many times (checks, warm-up, timing), and a live confirmation runs an engine on copies of
a call: a forward that draws random numbers (`torch.rand`, dropout left on) would advance the global generators
each time, and a seeded script would then draw other numbers after tuning than without aitune. `rng_kept()`
restores the CPU generator and, where CUDA is initialized, every CUDA device's generator on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def rng_kept() -> Iterator[None]:
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
