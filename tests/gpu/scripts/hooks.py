"""Hooks on a CUDA model: a pre-hook that scales the input, a hook that replaces the output, a counting global
forward hook, hooks registered after many calls (on the model and on a child), and a backward hook on a call made
with grad enabled.

Usage: python hooks.py OUT.pt
"""

import sys
from collections import Counter

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(256, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x)) + x


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[Block() for _ in range(4)])
        self.head = nn.Linear(256, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


def main(out_path: str) -> None:
    torch.manual_seed(0)
    model = Net().cuda().eval()
    counts: Counter = Counter()

    def pre(module: nn.Module, args: tuple) -> tuple:
        counts["pre"] += 1
        return (args[0] * 0.5,)

    def post(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        counts["post"] += 1
        return out + 1.0

    def everywhere(module: nn.Module, args: tuple, out: object) -> None:
        counts[f"global_{type(module).__name__}"] += 1

    model.register_forward_pre_hook(pre)
    model.register_forward_hook(post)
    handle = torch.nn.modules.module.register_module_forward_hook(everywhere)
    xs = [torch.randn(32, 256, device="cuda", generator=torch.Generator("cuda").manual_seed(i)) for i in range(24)]
    results: dict[str, object] = {}
    with torch.no_grad():
        for i, x in enumerate(xs[:16]):
            results[f"out_{i}"] = model(x)

        def late(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            counts["late"] += 1
            return out * 2.0

        def child(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            counts["child"] += 1
            return out - 0.25

        model.register_forward_hook(late)
        model.blocks[2].register_forward_hook(child)
        for i, x in enumerate(xs[16:], start=16):
            results[f"out_{i}"] = model(x)
    handle.remove()

    def backward(module: nn.Module, grad_in: tuple, grad_out: tuple) -> None:
        counts["backward"] += 1

    model.blocks[0].register_full_backward_hook(backward)
    for i in range(6):
        x = xs[i].clone().requires_grad_(True)
        y = model(x)
        y.sum().backward()
        results[f"grad_{i}"] = x.grad
    results["counts"] = dict(counts)
    torch.save(results, out_path)
    print("hooks:", dict(counts), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
