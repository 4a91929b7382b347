"""Plain inference script: transformers BERT-base (BertConfig defaults), random weights, seq 128, fp16 on CUDA.

Knows nothing of aitune. BENCH_BATCH (default 1) and BENCH_ITERS (default 60); prints `median_ms=...` over the
last 20 iterations and a checksum of the last output.
"""

import os
import statistics
import time

import torch
from transformers import BertConfig, BertModel

batch = int(os.environ.get("BENCH_BATCH", "1"))
iters = int(os.environ.get("BENCH_ITERS", "60"))
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.float16 if device == "cuda" else torch.float32
torch.manual_seed(0)
model = BertModel(BertConfig()).eval().to(device, dtype)
ids = torch.randint(0, 30000, (batch, 128), device=device)
mask = torch.ones(batch, 128, dtype=torch.long, device=device)
times = []
with torch.no_grad():
    for _ in range(iters):
        t0 = time.perf_counter()
        out = model(input_ids=ids, attention_mask=mask)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
print(f"bert-base batch={batch} device={device} dtype={dtype}")
print(f"checksum={float(out.last_hidden_state.float().sum()):.4f}")
print(f"median_ms={statistics.median(times[-20:]):.4f}")
