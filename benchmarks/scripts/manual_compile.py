"""The hand-tuned reference: the benchmark models compiled by hand with torch.compile(mode="reduce-overhead"),
the best setting in environment.md's baseline. Knows nothing of aitune; prints `median_ms=...` per model.

BENCH_MODEL (resnet50 | bert_base) and BENCH_BATCH (default 1).
"""

import os
import statistics
import time

import torch

name = os.environ.get("BENCH_MODEL", "bert_base")
batch = int(os.environ.get("BENCH_BATCH", "1"))
device, dtype = "cuda", torch.float16
torch.manual_seed(0)
if name == "resnet50":
    import torchvision

    model = torchvision.models.resnet50().eval().to(device, dtype)
    inputs = {"x": torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)}
else:
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig()).eval().to(device, dtype)
    inputs = {"input_ids": torch.randint(0, 30000, (batch, 128), device=device),
              "attention_mask": torch.ones(batch, 128, dtype=torch.long, device=device)}
compiled = torch.compile(model, mode="reduce-overhead")
times = []
with torch.no_grad():
    for _ in range(60):
        t0 = time.perf_counter()
        out = compiled(**inputs) if name != "resnet50" else compiled(inputs["x"])
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
print(f"{name} batch={batch} torch.compile(mode='reduce-overhead') by hand")
print(f"median_ms={statistics.median(times[-20:]):.4f}")
