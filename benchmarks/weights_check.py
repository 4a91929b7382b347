"""What noticing weight writes and attribute changes costs a tuned call. A developer benchmark (uses internals).

    python benchmarks/weights_check.py [--json OUT]     # BERT-base on CUDA (fp16) if available, else a 2-layer BERT

It tunes the model under the JIT hook (ONNX Runtime on the CPU, whose engine holds its own copy of the weights;
on CUDA whatever wins), then times, side by side in one run, medians of many calls:
- the tuned call through the hook, and its engine called directly (the hook's whole cost);
- the per-call checks alone: the version-counter sum (`weights_state`), the `Parameter.data` access count, and
  the watched plain attributes (`Watch.changed`);
- the check right after a `.data` access, which samples every weight tensor (`_weights.Baseline.changed`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def timed(fn: Callable[[], Any], n: int = 300) -> float:
    """Median microseconds of `fn()` (synchronizing CUDA after each)."""
    cuda = torch.cuda.is_available()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("AITUNE_JIT_BACKENDS", "ONNXRuntimeBackend")
    os.environ.setdefault("AITUNE_JIT_LOG_LEVEL", "WARNING")
    from transformers import BertConfig, BertModel

    import aitune.torch.jit.enable  # noqa: F401
    from aitune.torch._fingerprint import weights_state
    from aitune.torch._signature._weights import DATA_ACCESSES, Baseline
    from aitune.torch.jit import _tracker

    device, dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)
    torch.manual_seed(0)
    model = BertModel(BertConfig(num_hidden_layers=12 if cuda else 2)).eval().to(device, dtype)
    ids = torch.randint(0, 30000, (1, 128), device=device)
    mask = torch.ones(1, 128, dtype=torch.long, device=device)
    with torch.no_grad():
        for _ in range(5):
            model(input_ids=ids, attention_mask=mask)
        st = _tracker.STATES[id(model)]
        sig = st.tuned_signature()
        assert sig is not None, "BertModel was not tuned"
        engine = sig.engine
        for _ in range(5):  # past live confirmation, if any
            model(input_ids=ids, attention_mask=mask)
        via_hook = timed(lambda: model(input_ids=ids, attention_mask=mask))
        direct = timed(lambda: engine(input_ids=ids, attention_mask=mask))
        via_hook_2 = timed(lambda: model(input_ids=ids, attention_mask=mask))
        versions = timed(lambda: weights_state(model), 1000)
        accesses = timed(lambda: DATA_ACCESSES.value == 0, 5000)
        watch = sig.watch
        watched = timed(lambda: watch.changed(model), 1000) if watch is not None else None
        baseline = Baseline(model)

        def after_data_access() -> None:
            model.embeddings.word_embeddings.weight.data  # noqa: B018 - a read: the next look samples
            baseline.changed(model)

        sampled = timed(after_data_access, 50)
    hook_cost = min(via_hook, via_hook_2) - direct
    row = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "model": f"BertModel ({12 if cuda else 2} layers, {dtype}, 1x128)",
        "winner": sig.backend_description,
        "engine_bakes_weights": bool(getattr(engine, "bakes_weights", False)),
        "tuned_call_via_hook_us": round(min(via_hook, via_hook_2), 1),
        "engine_direct_us": round(direct, 1),
        "hook_cost_us": round(hook_cost, 1),
        "hook_cost_fraction": round(hook_cost / direct, 4),
        "version_sum_check_us": round(versions, 2),
        "data_access_check_us": round(accesses, 3),
        "watched_values": len(watch.items) if watch is not None else 0,
        "watched_values_check_us": round(watched, 2) if watched is not None else None,
        "check_after_a_data_access_us": round(sampled, 1),
        "weight_tensors": sum(1 for _ in model.parameters()) + sum(1 for _ in model.buffers()),
    }
    print(json.dumps(row, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=1)


if __name__ == "__main__":
    main()
