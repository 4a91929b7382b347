"""A plain inference script whose model weights change between calls.

Usage: python reload.py OUT.pt
6 calls, then load_state_dict() from a differently seeded model and 4 more calls, then one weight is scaled in
place under no_grad and 2 more calls. Saves every output.
"""

import sys

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU())
        self.fc = nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def main(out_path: str) -> None:
    torch.manual_seed(0)
    model = Net().eval()
    torch.manual_seed(1)
    other = Net().eval()
    x = torch.randn(16, 32)
    results: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for i in range(6):
            results[f"before_{i}"] = model(x)
        model.load_state_dict(other.state_dict())
        for i in range(4):
            results[f"reloaded_{i}"] = model(x)
        model.fc.weight.mul_(2)
        for i in range(2):
            results[f"scaled_{i}"] = model(x)
    torch.save(results, out_path)
    print("reload: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
