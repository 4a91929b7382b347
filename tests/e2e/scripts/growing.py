"""A sequence that grows by one position per call, as a decoder without a cache sees it: a small causal
self-attention model called on lengths 6, 7, ... 45, and once more on a length it saw before.

Usage: python growing.py OUT.pt
Saves every output.
"""

import sys

import torch
from torch import nn


class Decoder(nn.Module):
    def __init__(self, width: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.head = nn.Linear(width, 100)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        causal = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).triu(1)
        a, _ = self.attn(h, h, h, attn_mask=causal, need_weights=False)
        h = h + a * mask.unsqueeze(-1)
        return self.head(h + self.mlp(h))[:, -1]


def main(out_path: str) -> None:
    torch.manual_seed(0)
    model = Decoder().eval()
    ids = torch.randint(0, 100, (1, 45), generator=torch.Generator().manual_seed(1))
    results: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for n in [*range(6, 46), 20]:
            results[f"len{n}_{len(results)}"] = model(ids[:, :n], mask=torch.ones(1, n))
    torch.save(results, out_path)
    print("growing: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
