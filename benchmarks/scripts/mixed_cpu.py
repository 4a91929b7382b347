"""A model whose own torch work surrounds a small MLP child (the shape of a script where a child engine competes
with its parent for the cores). Knows nothing about aitune; prints the median iteration time.

    python benchmarks/scripts/mixed_cpu.py
"""

import statistics
import time

import torch
from torch import nn


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = Head()
        self.w = nn.Parameter(torch.randn(256, 256) * 0.05)

    def forward(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        y = self.head(x)
        for _ in range(steps):
            y = torch.tanh(y @ self.w)
        return y


def main() -> None:
    torch.manual_seed(0)
    model = Model().eval()
    x = torch.randn(64, 256)
    times = []
    with torch.no_grad():
        for _ in range(80):
            start = time.perf_counter()
            model(x, 20)
            times.append(time.perf_counter() - start)
    print(f"median_ms={statistics.median(times[-30:]) * 1e3:.3f}")


if __name__ == "__main__":
    main()
