"""Plain inference script: torchvision ResNet-50, random weights, fp16 on CUDA (fp32 on CPU).

Knows nothing of aitune. BENCH_BATCH (default 1) and BENCH_ITERS (default 60) set the workload; prints the
median latency of the last 20 iterations as `median_ms=...`, and a checksum of the last output.
"""

import os
import statistics
import time

import torch
import torchvision

batch = int(os.environ.get("BENCH_BATCH", "1"))
iters = int(os.environ.get("BENCH_ITERS", "60"))
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.float16 if device == "cuda" else torch.float32
torch.manual_seed(0)
model = torchvision.models.resnet50().eval().to(device, dtype)
x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
times = []
with torch.no_grad():
    for _ in range(iters):
        t0 = time.perf_counter()
        y = model(x)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
print(f"resnet50 batch={batch} device={device} dtype={dtype}")
print(f"checksum={float(y.float().sum()):.4f}")
print(f"median_ms={statistics.median(times[-20:]):.4f}")
