"""A transformers BERT script that asks for the hidden states on some calls (as feature extraction does):
transformers then installs output-capturing hooks on every layer for good, inert on the calls that do not ask.

Usage: python hidden_states.py OUT.pt
Saves last_hidden_state of each of 24 calls, the hidden states of the calls that asked for them (every sixth),
the attention weights of those that asked for them (every eighth), and how many modules carry forward hooks at
the end.
"""

import sys

import torch
from transformers import BertConfig, BertModel


def main(out_path: str) -> None:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=128, attn_implementation="eager")
    model = BertModel(config).eval()
    input_ids = torch.randint(0, config.vocab_size, (2, 16))
    attention_mask = torch.ones(2, 16, dtype=torch.long)
    attention_mask[1, 11:] = 0
    results: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for i in range(24):
            wanted, attentions = i % 6 == 0, i % 8 == 0
            out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=wanted,
                        output_attentions=attentions)
            results[f"last_hidden_state_{i}"] = out.last_hidden_state
            if wanted:
                results[f"hidden_states_{i}"] = torch.stack(out.hidden_states)
            if attentions:
                results[f"attentions_{i}"] = torch.stack(out.attentions)
    results["hooked_modules"] = torch.tensor(sum(1 for m in model.modules() if m._forward_hooks))
    torch.save(results, out_path)
    print("hidden_states: done")


if __name__ == "__main__":
    main(sys.argv[1])
