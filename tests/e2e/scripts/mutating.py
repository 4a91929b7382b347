"""Forwards with side effects a script relies on: a list the caller passes is appended to, a dict is filled, a
cache object grows, a counter on the module counts calls, a buffer keeps a running sum.

Usage: python mutating.py OUT.pt
Saves every output and what each side effect left behind.
"""

import sys

import torch
from torch import nn


class Cache:
    """A user's cache object: the forward appends to it and reads it back."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []

    def update(self, k: torch.Tensor) -> torch.Tensor:
        self.keys.append(k)
        return torch.cat(self.keys, dim=1)


class WithCache(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        k = self.proj(x)
        return cache.update(k).sum(dim=1)


class Logging(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, log: list, stats: dict) -> torch.Tensor:
        y = self.fc(x)
        log.append(float(y.mean()))
        stats["last_max"] = y.max()
        return y


class Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.calls = 0
        self.register_buffer("total", torch.zeros(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        y = self.fc(x)
        self.total += y.detach().sum(dim=0)
        return y


def main(out_path: str) -> None:
    torch.manual_seed(0)
    with_cache, logging_model, counting = WithCache().eval(), Logging().eval(), Counting().eval()
    results: dict[str, object] = {}
    log: list[float] = []
    stats: dict[str, torch.Tensor] = {}
    cache = Cache()
    with torch.no_grad():
        for i in range(8):
            x = torch.randn(2, 1, 8)
            results[f"cache_out_{i}"] = with_cache(x, cache)
            results[f"log_out_{i}"] = logging_model(x[:, 0], log, stats)
            results[f"count_out_{i}"] = counting(x[:, 0])
    results["cache_len"] = len(cache.keys)
    results["cache_keys"] = torch.cat(cache.keys, dim=1)
    results["log"] = torch.tensor(log)
    results["stats_last_max"] = stats["last_max"]
    results["calls"] = counting.calls
    results["total"] = counting.total
    torch.save(results, out_path)
    print("mutating: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
