"""LLM generation with transformers' GPT-2 small (random weights from its config, nothing downloaded): greedy
`generate()` of 64 new tokens for a batch of one prompt, timed end to end; it knows nothing about aitune.

    python examples/generate_gpt2.py --cache static
    AUTOWRAPT_BOOTSTRAP=aitune_enable_jit_tuning python examples/generate_gpt2.py --cache static

`--cache static` asks transformers for its static cache (fixed shapes from step to step); `dynamic` is its default
cache, which grows by one position per token. On CUDA it runs in float16, on CPU in float32 with a smaller model.
"""

import argparse
import hashlib
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", choices=["dynamic", "static"], default="static")
    parser.add_argument("--model", choices=["gpt2", "llama"], default="gpt2",
                        help="llama: a small Llama-style model (8 layers, grouped-query attention) instead")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--out", default=None, help="torch.save the generated token ids here")
    parser.add_argument("--no-compile", action="store_true",
                        help="pass disable_compile=True: with a static cache on CUDA, transformers otherwise compiles "
                             "the decode step itself (torch.compile, CUDA graphs)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)
    torch.manual_seed(0)
    if args.model == "llama":
        config = LlamaConfig(hidden_size=1024 if cuda else 256, intermediate_size=2816 if cuda else 512,
                             num_hidden_layers=8 if cuda else 4, num_attention_heads=16 if cuda else 4,
                             num_key_value_heads=4 if cuda else 2, vocab_size=32000, max_position_embeddings=512,
                             eos_token_id=2)
        model: torch.nn.Module = LlamaForCausalLM(config).to(device, dtype).eval()
    else:
        config = GPT2Config() if cuda else GPT2Config(n_layer=4, n_embd=256, n_head=4)
        model = GPT2LMHeadModel(config).to(device, dtype).eval()
    prompt = torch.randint(0, config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1)).to(device)
    extra: dict = {"cache_implementation": "static"} if args.cache == "static" else {}
    if args.no_compile:
        extra["disable_compile"] = True
    times, outputs = [], []
    with torch.no_grad():
        for _ in range(args.repeats):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
                                 min_new_tokens=args.new_tokens, do_sample=False,
                                 pad_token_id=config.eos_token_id, **extra)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            outputs.append(out.cpu())
    for i, t in enumerate(times):
        print(f"generate {i}: {t * 1000:8.1f} ms")
    steady = statistics.median(times[-3:])
    digest = hashlib.sha256(outputs[-1].numpy().tobytes()).hexdigest()[:16]
    print(f"median of the last 3: {steady * 1000:.1f} ms for {args.new_tokens} tokens "
          f"({args.new_tokens / steady:.0f} tokens/s); tokens {digest}; all runs equal: "
          f"{all(torch.equal(o, outputs[0]) for o in outputs)}")
    if args.out:
        torch.save(outputs, args.out)


if __name__ == "__main__":
    main()
