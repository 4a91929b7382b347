"""NVIDIA AITune's deferred JIT pattern: deferred mode and a pinned strategy set in code, a model with a child
that is never called, calls recorded first and tuned on `tune.deferred()`, then served.

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
        self.body = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.spare = nn.Linear(32, 32)  # never called

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def main(out_path: str) -> None:
    torch.manual_seed(0)
    model = WithSpare().eval()
    xs = [torch.randn(8, 32, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    results: dict[str, object] = {}
    with torch.no_grad():
        for i, x in enumerate(xs[:3]):
            results[f"before_{i}"] = model(x)
        results["tuned_signatures"] = tune.deferred() >= 0  # 0 in a plain run: nothing was recorded
        for i, x in enumerate(xs[3:]):
            results[f"after_{i}"] = model(x)
    torch.save(results, out_path)
    print("peer_deferred: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
