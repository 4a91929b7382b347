"""Python's meaning around CUDA models: autocast (fp16 and bf16), a seeded script whose model draws random
numbers, a data-derived Python number returned, an output that is the module's buffer (edited by the caller),
a step argument, many short-lived instances, a module-level flag, a plain attribute and a config object changed
after tuning, weights updated through `.data`, an input changed in place, and a list the caller passes.

Usage: python semantics.py OUT.pt
"""

import sys

import torch
from torch import nn

SCALE = 1.0


def body() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))


class Scorer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = body()
        self.register_buffer("running", torch.zeros(64))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, torch.Tensor]:
        s = torch.sigmoid(self.body(x))
        return s, int((s > 0.55).sum()), self.running


class Noisy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = body()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + 0.1 * torch.rand_like(x)


class Options:
    def __init__(self) -> None:
        self.shift = 0.0


class Tempered(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = body()
        self.temperature = 1.0
        self.options = Options()

    def forward(self, x: torch.Tensor, step: int = 0) -> torch.Tensor:
        return (self.body(x) / self.temperature + self.options.shift) * SCALE * (1 + step / 10)


class Doubles(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = body()

    def forward(self, x: torch.Tensor, seen: list) -> torch.Tensor:
        x.mul_(2)
        seen.append(1)
        return self.body(x)


def main(out_path: str) -> None:
    global SCALE
    torch.manual_seed(0)
    xs = [torch.randn(16, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(i)) for i in range(16)]
    r: dict[str, object] = {}
    with torch.no_grad():
        scorer = Scorer().cuda().eval()
        for i, x in enumerate(xs):
            s, n, running = scorer(x * (1 + i % 3))
            running.add_(1.0)
            r[f"score_{i}"], r[f"count_{i}"] = s, n
        r["running"] = scorer.running.clone()
        for dtype in (torch.float16, torch.bfloat16):
            with torch.autocast("cuda", dtype=dtype):
                for i in range(5):
                    s, n, _ = scorer(xs[i])
                    r[f"ac_{dtype}_{i}"], r[f"ac_dtype_{dtype}_{i}"] = s.float(), str(s.dtype)

        torch.manual_seed(1)
        noisy = Noisy().cuda().eval()
        for i, x in enumerate(xs[:10]):
            r[f"noisy_{i}"] = noisy(x)
        r["cuda_draw_after"] = torch.rand(8, device="cuda")
        r["cpu_draw_after"] = torch.rand(8)

        tempered = Tempered().cuda().eval()
        for i, x in enumerate(xs):
            if i == 6:
                tempered.temperature = 0.25
            if i == 9:
                tempered.options.shift = 2.0
            if i == 12:
                SCALE = 3.0
            r[f"tempered_{i}"] = tempered(x)
        for step in range(20):
            r[f"step_{step}"] = tempered(xs[0], step)

        plain, other = Tempered().cuda().eval(), Tempered().cuda().eval()
        for i, x in enumerate(xs):
            if i == 6:
                for p, q in zip(plain.parameters(), other.parameters()):
                    p.data.copy_(q)
            if i == 10:
                for p in plain.parameters():
                    p.data.mul_(0.5).add_(torch.ones_like(p), alpha=0.5)
            r[f"data_{i}"] = plain(x)

        for k in range(40):
            torch.manual_seed(100 + k)
            fresh = Tempered().cuda().eval()
            for _ in range(4):
                y = fresh(xs[1])
            r[f"instance_{k}"] = y

        doubles = Doubles().cuda().eval()
        seen: list = []
        for i, x in enumerate(xs[:8]):
            given = x.clone()
            r[f"doubles_{i}"] = doubles(given, seen)
            r[f"doubled_{i}"] = given
        r["seen"] = len(seen)
    torch.save(r, out_path)
    print("semantics: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
