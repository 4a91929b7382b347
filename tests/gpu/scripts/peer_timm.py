"""An NVIDIA AITune JIT user's script: settings in code through `aitune.torch.jit_config` (one-sample tuning, the
default strategy asked for with None, the model's own device), a timm ResNet at two batch sizes with a forward
hook counting the calls of one stage, then the hierarchy printed.

Usage: python peer_timm.py OUT.pt   (needs timm; runs plain when aitune is not importable)
"""

import sys

import timm
import torch

try:
    from aitune.torch import jit_config
    from aitune.torch.jit import print_hierarchy
except ImportError:  # a plain run of the same script
    jit_config = print_hierarchy = None

if jit_config is not None:
    jit_config.min_samples = 1
    jit_config.strategy = None
    jit_config.device = None


def main(out_path: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False).cuda().eval()
    calls: list[tuple[int, ...]] = []
    model.layer4.register_forward_hook(lambda m, i, o: calls.append(tuple(o.shape)))
    r: dict[str, object] = {}
    with torch.no_grad():
        for batch in (1, 8):
            for i in range(4):
                gen = torch.Generator("cuda").manual_seed(batch * 10 + i)
                x = torch.randn(batch, 3, 224, 224, device="cuda", generator=gen)
                r[f"bs{batch}_{i}"] = model(x)
    r["hook_calls"], r["hook_shapes"] = len(calls), calls
    if print_hierarchy is not None:
        print_hierarchy()
    torch.save(r, out_path)
    print("peer_timm: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
