"""A plain serving loop: the small residual CNN of cnn.py answers requests for SERVE_SECONDS (default 3) seconds.

Usage: python serving.py OUT.pt
Each request is one batch; the first, a middle and the last answers are saved, with the answer to one fixed
probe batch at the end. Per-call latencies go to stdout (`call_ms=`, `calls=`), for whoever wants to look.
"""

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cnn import Net  # noqa: E402


def main(out_path: str) -> None:
    torch.manual_seed(0)
    model = Net()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(8, 3, 32, 32)
    probe = torch.randn(8, 3, 32, 32)
    deadline = time.perf_counter() + float(os.environ.get("SERVE_SECONDS", "3"))
    results: dict[str, torch.Tensor] = {}
    times = []
    with torch.no_grad():
        while True:
            start = time.perf_counter()
            out = model(x)
            times.append((time.perf_counter() - start) * 1000)
            if len(times) == 1:
                results["first"] = out
            if len(times) == 20:
                results["twentieth"] = out
            if start > deadline and len(times) >= 20:
                break
        results["last"] = out
        results["probe"] = model(probe)
    torch.save(results, out_path)
    print(f"calls={len(times)}")
    print("call_ms=" + ",".join(f"{t:.3f}" for t in times))
    print("serving: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
