"""NVIDIA AITune's inspection pattern on CUDA: `enable_inspection()`, a model run a few times, the report saved
as HTML (with its JSON beside it) into the directory named by the INSPECT_DIR variable.

Usage: python peer_inspect.py OUT.pt
"""

import os
import sys

import torch
from torch import nn

from aitune.torch.jit import enable_inspection


def main(out_path: str) -> None:
    inspection = enable_inspection()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).cuda().eval()
    r: dict[str, object] = {}
    with torch.no_grad():
        for i in range(5):
            gen = torch.Generator("cuda").manual_seed(i)
            r[f"out_{i}"] = model(torch.randn(8, 3, 64, 64, device="cuda", generator=gen))
    page = inspection.save_report(os.environ.get("INSPECT_DIR", "."), model_name="inspect")
    r["page_written"] = page.exists() and page.stat().st_size > 1000
    torch.save(r, out_path)
    print("peer_inspect:", page, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
