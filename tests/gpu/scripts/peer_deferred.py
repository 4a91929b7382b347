"""NVIDIA AITune's deferred JIT pattern on CUDA: deferred mode and a pinned strategy set in code, a model with a
child that is never called, calls recorded first, tuned on `tune.deferred()`, then served.

Usage: python peer_deferred.py OUT.pt
"""

import sys

import torch
from torch import nn

from aitune.torch import jit_config
from aitune.torch.backend import TorchInductorJitBackend
from aitune.torch.jit import tune
from aitune.torch.jit.config import JITMode
from aitune.torch.tune_strategy import OneBackendStrategy

jit_config.mode = JITMode.TUNE_DEFERRED
jit_config.strategy = OneBackendStrategy(TorchInductorJitBackend())


class WithSpare(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 256))
        self.spare = nn.Linear(256, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def main(out_path: str) -> None:
    torch.manual_seed(0)
    model = WithSpare().cuda().eval()
    xs = [torch.randn(32, 256, device="cuda", generator=torch.Generator("cuda").manual_seed(i)) for i in range(8)]
    r: dict[str, object] = {}
    with torch.no_grad():
        for i, x in enumerate(xs[:4]):
            r[f"before_{i}"] = model(x)
        r["deferred_ran"] = tune.deferred() >= 0
        for i, x in enumerate(xs[4:]):
            r[f"after_{i}"] = model(x)
    torch.save(r, out_path)
    print("peer_deferred: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
