"""A model whose own Python loop of torch work surrounds a small MLP child, called 40 times; every output is kept.

Usage: python mixed.py OUT.pt
"""

import sys

import torch
from torch import nn


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = Head()
        self.w = nn.Parameter(torch.randn(64, 64) * 0.1)

    def forward(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        y = self.head(x)
        for _ in range(steps):
            y = torch.tanh(y @ self.w)
        return y


def main(out_path: str) -> None:
    torch.manual_seed(0)
    model = Mixed().eval()
    xs = torch.randn(40, 8, 64)
    with torch.no_grad():
        outs = [model(x, 4) for x in xs]
    torch.save({"outs": torch.stack(outs)}, out_path)


if __name__ == "__main__":
    main(sys.argv[1])
