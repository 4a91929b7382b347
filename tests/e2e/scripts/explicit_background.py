"""The explicit API with background tuning: `ait.tune(model, xs, background=True)` returns at once, the script
keeps calling (from two threads) while aitune's worker tunes, then `ait.wait()`; every answer is compared with a
plain copy of the model made before wrapping.

Usage: python explicit_background.py OUT.pt
"""

import copy
import os
import sys
import threading

import torch

import aitune.torch as ait
from aitune.torch.backend import TorchInductorJitBackend
from aitune.torch.config import config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from explicit_api import Encoder  # noqa: E402


def main(out_path: str) -> None:
    config.min_speedup = 1e-6  # tiny model on a CPU: any correct engine
    torch.manual_seed(0)
    model = Encoder().eval()
    plain = copy.deepcopy(model)
    model.mlp = ait.Module(model.mlp, "mlp", strategy=ait.OneBackendStrategy(TorchInductorJitBackend()))
    x = torch.randn(8, 32)
    ait.tune(model, [x, x, x], background=True)
    state_after_tune = model.mlp.aitune_runtime.state
    answers: list[tuple[torch.Tensor, torch.Tensor]] = []
    lock = threading.Lock()
    done = threading.Event()

    def serve(seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            while not done.is_set():
                xi = torch.randn(8, 32, generator=gen)
                out = model(xi)
                with lock:
                    answers.append((out, plain(xi)))

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    finished = ait.wait(timeout=600)
    with torch.no_grad():
        for _ in range(20):  # after the switch, this thread alone
            xi = torch.randn(8, 32)
            answers.append((model(xi), plain(xi)))
    done.set()
    for t in threads:
        t.join()
    rt = model.mlp.aitune_runtime
    served = sum(s.engine_calls for s in rt.signatures.values())
    worst = max(float((a - b).abs().max()) for a, b in answers)
    torch.save({"state_after_tune": state_after_tune, "state": rt.state, "finished": finished,
                "served": served, "answers": len(answers), "worst": worst,
                "timing": [s.timing for s in rt.signatures.values()]}, out_path)
    print(f"after tune: {state_after_tune}; after wait: {rt.state}; engine served {served} of {len(answers)} "
          f"answers; worst difference {worst:.2e}")


if __name__ == "__main__":
    main(sys.argv[1])
