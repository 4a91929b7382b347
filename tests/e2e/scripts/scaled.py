"""A model whose forward reads a plain attribute set from outside (the SCALE env var, read when it is built), so
its behaviour can change between runs without any change to its weights or code.

Usage: SCALE=2.0 python scaled.py OUT.pt   (saves the last output and the expected value computed by hand)
"""

import os
import sys

import torch
from torch import nn

SCALE = float(os.environ.get("SCALE", "1.0"))


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.scale = SCALE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.scale


def main(out_path: str) -> None:
    torch.manual_seed(0)
    model = Scaled().eval()
    x = torch.randn(4, 16)
    with torch.no_grad():
        for _ in range(6):
            out = model(x)
        expected = torch.nn.functional.linear(x, model.fc.weight, model.fc.bias) * SCALE
    torch.save({"out": out, "expected": expected}, out_path)


if __name__ == "__main__":
    main(sys.argv[1])
