"""Python's meaning around a model: calls under autocast, a seeded script that draws random numbers after its
model ran, a Python number computed from the data and returned, an output that is the module's own buffer
(edited in place by the script), a step argument in a loop, and many short-lived instances of one model.

Usage: python python_semantics.py OUT.pt
Saves every output and what the script's own state looked like afterwards.
"""

import sys

import torch
from torch import nn


class Scorer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 16))
        self.register_buffer("running", torch.zeros(16))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, torch.Tensor]:
        scores = torch.sigmoid(self.body(x))
        return scores, int((scores > 0.6).sum()), self.running


class Stepper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 16))

    def forward(self, x: torch.Tensor, step: int) -> torch.Tensor:
        return self.body(x) * (1.0 + step / 10)


def main(out_path: str) -> None:
    results: dict[str, object] = {}
    torch.manual_seed(0)
    model = Scorer().eval()
    inputs = [torch.randn(8, 16, generator=torch.Generator().manual_seed(i)) for i in range(12)]
    with torch.no_grad():
        for i, x in enumerate(inputs):
            scores, count, running = model(x * (1 + i % 3))
            running.add_(1.0)  # the caller edits the returned buffer in place
            results[f"scores_{i}"] = scores
            results[f"count_{i}"] = count
        results["running"] = model.running.clone()
        results["draw_after"] = torch.rand(5)  # seeded: the same numbers as without aitune
        with torch.autocast("cpu", dtype=torch.bfloat16):
            for i in range(4):
                scores, _, _ = model(inputs[i])
                results[f"autocast_{i}"] = scores.float()
                results[f"autocast_dtype_{i}"] = str(scores.dtype)
        stepper = Stepper().eval()
        for step in range(20):
            results[f"step_{step}"] = stepper(inputs[0], step)
        for k in range(30):  # short-lived instances of one model, as a loop that builds them would
            torch.manual_seed(100 + k)
            fresh = Stepper().eval()
            for _ in range(4):
                y = fresh(inputs[1], 0)
            results[f"instance_{k}"] = y
    torch.save(results, out_path)
    print("python_semantics: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
