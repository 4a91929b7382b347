"""LLM generation with transformers: a small GPT-2 and a small Llama, random weights from their configs, greedy
`generate()` with the default dynamic cache and with the static cache.

Usage: python generate.py OUT.pt [new_tokens]
Saves the generated token ids of every run.
"""

import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM


def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=128))
    llama = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                                         max_position_embeddings=128))
    return {"gpt2": gpt2.eval(), "llama": llama.eval()}


def main(out_path: str, new_tokens: int) -> None:
    results: dict[str, torch.Tensor] = {}
    prompt = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(1))
    for name, model in models().items():
        for cache in ("dynamic", "static"):
            extra = {"cache_implementation": "static"} if cache == "static" else {}
            for run in range(2):
                out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                                     do_sample=False, pad_token_id=0, **extra)
                results[f"{name}_{cache}_{run}"] = out
    torch.save(results, out_path)
    print("generate: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 12)
