"""An inference script that uses hooks: counting hooks, a pre-hook that scales the input, a hook that replaces the
output, on the model and on a submodule, some registered before the first call and some after many calls.

Usage: python hooks.py OUT.pt
Saves every output and how many times each hook ran.
"""

import sys

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x)) + x


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = Block()
        self.b = Block()
        self.head = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.a(x)))


def main(out_path: str) -> None:
    torch.manual_seed(0)
    model = Net().eval()
    counts = {"pre": 0, "post": 0, "late": 0, "child": 0}

    def pre(module: nn.Module, args: tuple) -> tuple:
        counts["pre"] += 1
        return (args[0] * 0.5,)

    def post(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        counts["post"] += 1
        return out + 1.0

    model.register_forward_pre_hook(pre)
    model.register_forward_hook(post)
    xs = [torch.randn(4, 32) for _ in range(12)]
    results: dict[str, object] = {}
    with torch.no_grad():
        for i, x in enumerate(xs[:8]):
            results[f"out_{i}"] = model(x)

        def late(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            counts["late"] += 1
            return out * 2.0

        def child(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            counts["child"] += 1

        model.register_forward_hook(late)       # registered after the model was tuned
        model.a.register_forward_hook(child)    # on a submodule an engine of the model would fuse away
        for i, x in enumerate(xs[8:], start=8):
            results[f"out_{i}"] = model(x)
    results["counts"] = dict(counts)
    torch.save(results, out_path)
    print("hooks:", counts, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
