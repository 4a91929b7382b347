"""A plain transformers BERT inference script: a small BertModel with random weights, called with keywords.

Usage: python bert.py OUT.pt
Saves last_hidden_state and pooler_output of each of 8 calls.
"""

import sys

import torch
from transformers import BertConfig, BertModel


def main(out_path: str) -> None:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=128)
    model = BertModel(config).eval()
    batch, seq = 2, 16
    input_ids = torch.randint(0, config.vocab_size, (batch, seq))
    token_type_ids = torch.zeros(batch, seq, dtype=torch.long)
    token_type_ids[:, seq // 2:] = 1
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    attention_mask[1, seq - 5:] = 0  # the second sequence is padded
    results: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for i in range(8):
            out = model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            results[f"last_hidden_state_{i}"] = out.last_hidden_state
            results[f"pooler_output_{i}"] = out.pooler_output
    torch.save(results, out_path)
    print("bert: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
