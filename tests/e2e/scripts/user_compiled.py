"""A script that compiles its model with torch.compile itself, then runs it.

Usage: python user_compiled.py OUT.pt
Saves the outputs of 6 calls.
"""

import sys

import torch
from torch import nn


def main(out_path: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8)).eval()
    compiled = torch.compile(model)
    results = {}
    with torch.no_grad():
        for i in range(6):
            results[f"out_{i}"] = compiled(torch.randn(4, 16, generator=torch.Generator().manual_seed(i)))
    torch.save(results, out_path)
    print("user_compiled: done")


if __name__ == "__main__":
    main(sys.argv[1])
