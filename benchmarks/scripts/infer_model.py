"""A plain inference script for the benchmark suite: one of torchvision ResNet-50, transformers BERT-base (seq
128) or timm ViT-B/16, random weights, fp16 on CUDA (fp32 on the CPU), called BENCH_ITERS times on one batch.
For the CPU, two smaller models that need no torchvision or timm: bert_small (BERT, 4 layers of width 256, seq
128) and cnn_small (the README example's in-script ResNet, 224x224).

Knows nothing of aitune. It compiles by hand only when asked, the way a user would:

    BENCH_MODEL=resnet50|bert_base|vit_b16|bert_small|cnn_small   BENCH_BATCH=1   BENCH_ITERS=60
    BENCH_COMPILE=eager|default|reduce-overhead|max-autotune-no-cudagraphs   (torch.compile's mode; eager: none)
    BENCH_CHANNELS_LAST=1   (model and input in channels_last; convolutional models only)
    BENCH_SECONDS=0   (keep calling until this many seconds from the script's start, after BENCH_ITERS calls)

Prints `call_end_s=` (seconds from the script's start to the end of each call, synchronized), `median_ms=` (the
median of the last half of the calls), `peak_mem_mb=` (torch.cuda.max_memory_allocated) and a checksum.
"""

import time

START = time.perf_counter()

import os  # noqa: E402
import statistics  # noqa: E402

import torch  # noqa: E402

name = os.environ.get("BENCH_MODEL", "resnet50")
batch = int(os.environ.get("BENCH_BATCH", "1"))
iters = int(os.environ.get("BENCH_ITERS", "60"))
mode = os.environ.get("BENCH_COMPILE", "eager")
seconds = float(os.environ.get("BENCH_SECONDS", "0"))
channels_last = os.environ.get("BENCH_CHANNELS_LAST") == "1"
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.float16 if device == "cuda" else torch.float32
torch.manual_seed(0)
if name == "resnet50":
    import torchvision

    model = torchvision.models.resnet50()
    inputs = (torch.randn(batch, 3, 224, 224),)
elif name == "vit_b16":
    import timm

    model = timm.create_model("vit_base_patch16_224", pretrained=False)
    inputs = (torch.randn(batch, 3, 224, 224),)
elif name in ("bert_base", "bert_small"):
    from transformers import BertConfig, BertModel

    small = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024}
    model = BertModel(BertConfig(**(small if name == "bert_small" else {})))
    inputs = (torch.randint(0, 30000, (batch, 128)), torch.ones(batch, 128, dtype=torch.long))
elif name == "cnn_small":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    from infer_cnn import SmallResNet

    model = SmallResNet()
    inputs = (torch.randn(batch, 3, 224, 224),)
else:
    raise SystemExit(f"BENCH_MODEL={name!r}: one of resnet50, bert_base, vit_b16, bert_small, cnn_small")
model = model.eval().to(device, dtype)
inputs = tuple(t.to(device, dtype) if t.is_floating_point() else t.to(device) for t in inputs)
if channels_last:
    model = model.to(memory_format=torch.channels_last)
    inputs = tuple(t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in inputs)
run = model if mode == "eager" else torch.compile(model, mode=None if mode == "default" else mode)
times, ends = [], []
with torch.no_grad():
    while len(times) < iters or time.perf_counter() - START < seconds:
        t0 = time.perf_counter()
        out = run(*inputs)
        if device == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        times.append((t1 - t0) * 1000)
        ends.append(t1 - START)
out = out.last_hidden_state if hasattr(out, "last_hidden_state") else out
print(f"{name} batch={batch} device={device} dtype={dtype} compile={mode} channels_last={channels_last}")
print("call_end_s=" + ",".join(f"{e:.3f}" for e in ends))
print("call_ms=" + ",".join(f"{t:.4f}" for t in times))
print(f"checksum={float(out.float().sum()):.4f}")
if device == "cuda":
    print(f"peak_mem_mb={torch.cuda.max_memory_allocated() / 2**20:.1f}")
print(f"median_ms={statistics.median(times[len(times) // 2:]):.4f}")
