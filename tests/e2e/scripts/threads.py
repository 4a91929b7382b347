"""One model shared by 4 threads that call it concurrently (eval, no_grad), as a threaded server would.

Usage: python threads.py OUT.pt
Each thread makes 10 calls with its own fixed input, waits for the others, then makes 10 more (so the calls of
the second round overlap whatever the first round started). Saves every output keyed by thread and call index.
"""

import sys
import threading

import torch
from torch import nn

N_THREADS = 4
N_CALLS = 10


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 16, 3, padding=1)
        self.norm = nn.LayerNorm(32)
        self.proj = nn.Linear(16 * 32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm(self.conv(x)))
        return self.proj(y.flatten(1))


def main(out_path: str) -> None:
    torch.manual_seed(0)
    model = Net().eval()
    inputs = [torch.randn(4, 8, 32) for _ in range(N_THREADS)]
    outputs: dict[int, list[torch.Tensor]] = {i: [] for i in range(N_THREADS)}
    errors: list[BaseException] = []
    barrier = threading.Barrier(N_THREADS, timeout=600)

    def worker(index: int) -> None:
        try:
            with torch.no_grad():  # grad mode is per thread
                for _ in range(2):
                    barrier.wait()
                    for _ in range(N_CALLS):
                        outputs[index].append(model(inputs[index]))
        except BaseException as e:  # surfaced by the main thread
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,), name=f"worker-{i}") for i in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    results = {f"thread{i}_call{j}": out for i, outs in outputs.items() for j, out in enumerate(outs)}
    torch.save(results, out_path)
    print("threads: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
