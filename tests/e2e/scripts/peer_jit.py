"""Written the way NVIDIA AITune's JIT examples are: settings set in code through `aitune.torch.jit_config`
(one-sample tuning, the default strategy asked for with None, the module's own device), a ResNet-style CNN
called at two batch sizes, and a forward hook counting the calls of one block.

Usage: python peer_jit.py OUT.pt
"""

import sys

import torch
from torch import nn

from aitune.torch import jit_config

jit_config.min_samples = 1  # the first call of a signature tunes it, the next one uses the engine
jit_config.strategy = None
jit_config.device = None


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class ResNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(Residual(16), Residual(16))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def main(out_path: str) -> None:
    torch.manual_seed(0)
    model = ResNetish().eval()
    counted: list[tuple[int, ...]] = []
    model.blocks[1].register_forward_hook(lambda m, i, o: counted.append(tuple(o.shape)))
    results: dict[str, object] = {}
    with torch.no_grad():
        for batch in (2, 4):
            for i in range(3):
                x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(10 * batch + i))
                results[f"bs{batch}_{i}"] = model(x)
    results["hook_calls"] = len(counted)
    results["hook_shapes"] = counted
    torch.save(results, out_path)
    print("peer_jit: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
