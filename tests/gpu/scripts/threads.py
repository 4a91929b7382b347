"""One CUDA model shared by 8 threads that call it concurrently while it is being tuned (a threaded server).

Usage: python threads.py OUT.pt
"""

import sys
import threading

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(16, 64, 3, padding=1)
        self.norm = nn.LayerNorm(128)
        self.proj = nn.Linear(64 * 128, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.relu(self.norm(self.conv(x))).flatten(1))


def main(out_path: str) -> None:
    torch.manual_seed(0)
    model = Net().cuda().eval()
    inputs = [torch.randn(8, 16, 128, device="cuda") for _ in range(8)]
    outputs: dict[int, list[torch.Tensor]] = {i: [] for i in range(8)}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8, timeout=600)

    def worker(i: int) -> None:
        try:
            with torch.no_grad():
                for _ in range(3):
                    barrier.wait()
                    for _ in range(15):
                        outputs[i].append(model(inputs[i]).cpu())
        except BaseException as e:
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    torch.save({f"t{i}_{j}": o for i, outs in outputs.items() for j, o in enumerate(outs)}, out_path)
    print("threads: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
