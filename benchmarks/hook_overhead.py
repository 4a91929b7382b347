"""Where the time of a tuned call goes: the module called through aitune's hook vs its engine called directly,
and the cost of the hook on a module that passes through. A developer benchmark (uses aitune internals).

    python benchmarks/hook_overhead.py      # BERT-base (transformers) on CUDA if available
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

import aitune.torch.jit.enable  # noqa: F401
from aitune.torch.jit import _tracker


def timed(fn, n: int = 200) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    from transformers import BertConfig, BertModel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    layers = 12 if device == "cuda" else 2
    model = BertModel(BertConfig(num_hidden_layers=layers)).eval().to(device, dtype)
    ids = torch.randint(0, 30000, (1, 128), device=device)
    mask = torch.ones(1, 128, dtype=torch.long, device=device)
    with torch.no_grad():
        for _ in range(4):
            model(input_ids=ids, attention_mask=mask)
        st = _tracker.STATES[id(model)]
        sig = st.tuned_signature()
        assert sig is not None, "BertModel was not tuned"
        engine = sig.engine
        via_hook = timed(lambda: model(input_ids=ids, attention_mask=mask))
        direct = timed(lambda: engine(input_ids=ids, attention_mask=mask))
        eager = timed(lambda: torch.nn.Module._wrapped_call_impl(model, input_ids=ids, attention_mask=mask), 50)
        ident = torch.nn.Identity()
        x = torch.zeros(1)
        ident(x)
        pass_hook = timed(lambda: ident(x), 2000)
        pass_orig = timed(lambda: torch.nn.Module._wrapped_call_impl(ident, x), 2000)
    print(f"device={device} winner={sig.backend_description}")
    print(f"tuned call via hook: {via_hook:.1f} us; engine direct: {direct:.1f} us; "
          f"hook cost on a tuned call: {via_hook - direct:.1f} us; eager: {eager:.1f} us")
    print(f"passthrough module: {pass_hook:.2f} us via hook vs {pass_orig:.2f} us original")
    if "--profile" in sys.argv:
        import cProfile
        import pstats

        with torch.no_grad():
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(200):
                model(input_ids=ids, attention_mask=mask)
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
