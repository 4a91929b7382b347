"""An ordinary image-classification inference loop; it knows nothing about aitune.

Run it as is, then with JIT tuning, and compare the latency it prints:

    python examples/infer_cnn.py
    AUTOWRAPT_BOOTSTRAP=aitune_enable_jit_tuning python examples/infer_cnn.py

Uses torchvision's resnet18 (random weights, nothing downloaded) when torchvision is installed, else a small
ResNet-like network defined below. On CUDA it runs in float16, on CPU in float32.
"""

import argparse
import statistics
import time

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class SmallResNet(nn.Module):
    def __init__(self, num_classes: int = 1000, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
        self.layers = nn.Sequential(BasicBlock(width, width, 1), BasicBlock(width, 2 * width, 2),
                                    BasicBlock(2 * width, 4 * width, 2), BasicBlock(4 * width, 8 * width, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def build_model() -> tuple[nn.Module, str]:
    try:
        from torchvision.models import resnet18
    except ImportError:
        return SmallResNet(), "SmallResNet (in-script; torchvision is not installed)"
    return resnet18(weights=None), "torchvision resnet18 (random weights)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model, description = build_model()
    model = model.to(device=device, dtype=dtype).eval()
    x = torch.randn(args.batch_size, 3, 224, 224, device=device, dtype=dtype)
    print(f"model: {description}")
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"dtype: {str(dtype).removeprefix('torch.')}, batch: {args.batch_size}")

    latencies: list[float] = []
    with torch.no_grad():
        for i in range(args.iterations):
            start = time.perf_counter()
            logits = model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            latencies.append((time.perf_counter() - start) * 1000.0)
            print(f"iteration {i + 1:3d}: {latencies[-1]:9.2f} ms", flush=True)
    last = latencies[-10:]
    print(f"median latency of the last {len(last)} calls: {statistics.median(last):.2f} ms")
    print(f"top-1 class of the first image: {int(logits[0].argmax())}")
    print("done")


if __name__ == "__main__":
    main()
