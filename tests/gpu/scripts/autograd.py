"""Eval-mode CUDA models called with grad enabled, as a script computing saliency or fine-tuning a head would:
outputs must carry grad as in eager, and backward must give the same gradients.

Usage: python autograd.py OUT.pt
"""

import sys

import torch
from torch import nn


def main(out_path: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 512), nn.GELU(), nn.Linear(512, 128), nn.LayerNorm(128)).cuda().eval()
    frozen = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 8, 3, padding=1)).cuda().eval()
    frozen.requires_grad_(False)
    results: dict[str, object] = {}
    for i in range(10):
        x = torch.randn(16, 128, device="cuda", generator=torch.Generator("cuda").manual_seed(i))
        y = model(x)
        results[f"requires_grad_{i}"] = y.requires_grad
        y.pow(2).mean().backward()
        results[f"weight_grad_{i}"] = model[0].weight.grad.clone()
        model.zero_grad()
    for i in range(10):  # the input needs grad, the parameters do not (saliency)
        img = torch.randn(4, 3, 32, 32, device="cuda", generator=torch.Generator("cuda").manual_seed(50 + i))
        img.requires_grad_(True)
        out = frozen(img)
        results[f"saliency_rg_{i}"] = out.requires_grad
        out.sum().backward()
        results[f"saliency_{i}"] = img.grad
    with torch.no_grad():
        for i in range(6):
            x = torch.randn(16, 128, device="cuda", generator=torch.Generator("cuda").manual_seed(100 + i))
            results[f"nograd_{i}"] = model(x)
    torch.save(results, out_path)
    print("autograd: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
