"""The explicit API as a user writes it: `save` tunes a model and writes a checkpoint; `load` (another process)
builds the same model, loads the checkpoint and serves from it.

Usage: python explicit_api.py save|load CHECKPOINT.ait OUT.pt
"""

import sys

import torch
from torch import nn

import aitune.torch as ait
from aitune.torch.backend import ONNXRuntimeBackend
from aitune.torch.config import config


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(32, 64)
        self.mlp = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64))
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        return self.head(h + self.mlp(h))


def build() -> nn.Module:
    torch.manual_seed(0)
    model = Encoder().eval()
    model.mlp = ait.Module(model.mlp, "mlp", strategy=ait.OneBackendStrategy(ONNXRuntimeBackend()))
    return model


def main(action: str, checkpoint: str, out_path: str) -> None:
    config.min_speedup = 1e-6  # tiny model on a CPU: any correct engine
    model = build()
    xs = [torch.randn(n, 32) for n in (4, 8, 6)]
    if action == "save":
        ait.tune(model, xs)
        ait.save(model, checkpoint)
    else:
        ait.load(model, checkpoint)
    with torch.no_grad():
        outputs = [model(x) for x in xs]
    rt = model.mlp.aitune_runtime
    served = sum(s.engine_calls for s in rt.signatures.values())
    torch.save({"outputs": outputs, "served": torch.tensor(served), "inputs": xs}, out_path)
    print(f"{action}: engine served {served} call(s)")


if __name__ == "__main__":
    main(*sys.argv[1:4])
