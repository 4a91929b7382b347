"""An eval-mode model called with grad enabled (no torch.no_grad), then a backward pass: input saliency.

Usage: python grad.py OUT.pt
Saves the outputs, whether they require grad, and the gradients of the input and of the weights.
"""

import sys

import torch
from torch import nn


def main(out_path: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 4)).eval()
    results: dict[str, object] = {}
    for i in range(6):
        x = torch.randn(8, 16, requires_grad=True)
        out = model(x)
        results[f"requires_grad_{i}"] = out.requires_grad
        out.sum().backward()
        results[f"out_{i}"] = out.detach()
        results[f"input_grad_{i}"] = x.grad.clone()
        results[f"weight_grad_{i}"] = model[0].weight.grad.clone()
        model.zero_grad()
    torch.save(results, out_path)
    print("grad: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
