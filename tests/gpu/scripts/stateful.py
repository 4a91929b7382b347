"""CUDA models whose forward changes things: a list and a dict the caller passes, a cache object that grows,
a call counter on the module, BatchNorm in training mode, and a model left in training mode with dropout in a
seeded script.

Usage: python stateful.py OUT.pt
"""

import sys

import torch
from torch import nn


class Cache:
    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []

    def push(self, k: torch.Tensor) -> torch.Tensor:
        self.keys.append(k)
        return torch.cat(self.keys, dim=1)


class Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(64, 64)
        self.k = nn.Linear(64, 64)
        self.calls = 0

    def forward(self, x: torch.Tensor, cache: Cache, log: list, stats: dict) -> torch.Tensor:
        self.calls += 1
        keys = cache.push(self.k(x))
        att = torch.softmax(self.q(x) @ keys.transpose(1, 2), dim=-1)
        log.append(tuple(keys.shape))
        stats["norm"] = stats.get("norm", 0.0) + float(att.norm())
        return att @ keys


def main(out_path: str) -> None:
    torch.manual_seed(0)
    results: dict[str, object] = {}
    with torch.no_grad():
        attn = Attn().cuda().eval()
        for seq in range(3):
            cache, log, stats = Cache(), [], {}
            for step in range(8):
                x = torch.randn(2, 1, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(seq * 8 + step))
                results[f"attn_{seq}_{step}"] = attn(x, cache, log, stats)
            results[f"cache_len_{seq}"] = len(cache.keys)
            results[f"log_{seq}"] = log
            results[f"stats_{seq}"] = round(stats["norm"], 3)
        results["attn_calls"] = attn.calls

        bn = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU()).cuda()  # left in training mode
        for i in range(8):
            results[f"bn_{i}"] = bn(torch.randn(4, 3, 16, 16, device="cuda",
                                                generator=torch.Generator("cuda").manual_seed(100 + i)))
        results["bn_mean"] = bn[1].running_mean.clone()
        results["bn_batches"] = int(bn[1].num_batches_tracked)

        torch.manual_seed(7)
        drop = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, 64)).cuda()  # no .eval()
        for i in range(8):
            results[f"drop_{i}"] = drop(torch.randn(8, 64, device="cuda"))
        results["draw_after"] = torch.rand(4, device="cuda")
    torch.save(results, out_path)
    print("stateful: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
