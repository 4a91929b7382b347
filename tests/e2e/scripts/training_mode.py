"""An inference loop that forgot model.eval(): the model stays in training mode (dropout off by p=0).

Usage: python training_mode.py OUT.pt
"""

import sys

import torch
from torch import nn


def main(out_path: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.0), nn.Linear(32, 4))
    results: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for i in range(6):
            results[f"out_{i}"] = model(torch.randn(4, 16))
    torch.save(results, out_path)
    print("training_mode: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
