"""An ordinary BERT encoder inference loop with transformers; it knows nothing about aitune.

Run it as is, then with JIT tuning, and compare the latency it prints:

    python examples/infer_bert.py
    AUTOWRAPT_BOOTSTRAP=aitune_enable_jit_tuning python examples/infer_bert.py

BERT-base sized (BertConfig() defaults: 12 layers, hidden 768) with random weights (nothing downloaded), batch 1,
sequence 128, float16 on CUDA. On CPU a 4-layer variant in float32, so the run takes a reasonable time.
"""

import argparse
import statistics
import time

import torch
from transformers import BertConfig, BertModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        config, dtype = BertConfig(), torch.float16
    else:
        config, dtype = BertConfig(num_hidden_layers=4), torch.float32
    model = BertModel(config).to(device=device, dtype=dtype).eval()
    input_ids = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len), device=device)
    attention_mask = torch.ones_like(input_ids)
    token_type_ids = torch.zeros_like(input_ids)
    print(f"model: BertModel, {config.num_hidden_layers} layers, hidden {config.hidden_size} (random weights)")
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"dtype: {str(dtype).removeprefix('torch.')}, batch: {args.batch_size}, sequence: {args.seq_len}")

    latencies: list[float] = []
    with torch.no_grad():
        for i in range(args.iterations):
            start = time.perf_counter()
            out = model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            if device.type == "cuda":
                torch.cuda.synchronize()
            latencies.append((time.perf_counter() - start) * 1000.0)
            print(f"iteration {i + 1:3d}: {latencies[-1]:9.2f} ms", flush=True)
    last = latencies[-10:]
    print(f"median latency of the last {len(last)} calls: {statistics.median(last):.2f} ms")
    print(f"pooler output norm: {out.pooler_output.float().norm():.4f}")
    print("done")


if __name__ == "__main__":
    main()
