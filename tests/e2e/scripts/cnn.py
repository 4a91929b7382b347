"""A plain CNN inference script: a small residual classifier, eval mode, no_grad.

Usage: python cnn.py OUT.pt
Runs 10 calls on one fixed batch, then one call with a different batch size, and saves every output.
"""

import sys

import torch
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(x + y)


class Net(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.block1 = ResidualBlock(16)
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32),
                                  nn.ReLU())
        self.block2 = ResidualBlock(32)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(self.stem(x))
        x = self.block2(self.down(x))
        return self.head(torch.flatten(self.pool(x), 1))


def main(out_path: str) -> None:
    torch.manual_seed(0)
    model = Net()
    # Non-trivial batch-norm statistics, so eval-mode normalization actually does something.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(8, 3, 32, 32)
    x_small = torch.randn(3, 3, 32, 32)
    results: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for i in range(10):
            results[f"out_{i}"] = model(x)
        results["out_small_batch"] = model(x_small)
    torch.save(results, out_path)
    print("cnn: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
