"""Python state around a model that an engine running no Python would freeze: a list the caller passes and the
forward appends to, a list the module keeps, a module-level flag and setting, plain attributes changed by the
script after the model ran a while (of the module and of a config object it holds), weights updated through
`.data` (the EMA and weight-loading idiom) and an input the forward changes in place.

Usage: python frozen_state.py OUT.pt
Saves every output and the script's own state afterwards.
"""

import sys

import torch
from torch import nn

SETTINGS = {"scale": 1.0}
USE_BIAS = True


def body() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 16))


class Logged(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = body()
        self.history: list[int] = []

    def forward(self, x: torch.Tensor, stats: list) -> torch.Tensor:
        y = self.body(x)
        stats.append(float(y.mean()))
        self.history.append(int(y.shape[0]))
        return y


class Flagged(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = body()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if USE_BIAS:
            y = y + 1
        return y * SETTINGS["scale"]


class Options:
    def __init__(self) -> None:
        self.shift = 0.0


class Tempered(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = body()
        self.temperature = 1.0
        self.options = Options()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) / self.temperature + self.options.shift


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = body()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Doubles(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = body()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2)
        return self.body(x)


def main(out_path: str) -> None:
    global USE_BIAS
    results: dict[str, object] = {}
    torch.manual_seed(0)
    xs = [torch.randn(8, 16, generator=torch.Generator().manual_seed(i)) for i in range(14)]
    with torch.no_grad():
        logged = Logged().eval()
        for i in range(10):
            stats: list = []
            results[f"logged_{i}"] = logged(xs[i], stats)
            results[f"stats_{i}"] = len(stats)
        results["history"] = len(logged.history)

        flagged = Flagged().eval()
        for i, x in enumerate(xs):
            if i == 7:
                SETTINGS["scale"] = 3.0
            if i == 10:
                USE_BIAS = False
            results[f"flagged_{i}"] = flagged(x)

        tempered = Tempered().eval()
        for i, x in enumerate(xs):
            if i == 7:
                tempered.temperature = 0.25
            if i == 11:
                tempered.options.shift = 2.0
            results[f"tempered_{i}"] = tempered(x)

        plain, other = Plain().eval(), Plain().eval()
        for i, x in enumerate(xs):
            if i == 7:
                for p, q in zip(plain.parameters(), other.parameters()):
                    p.data.copy_(q)
            if i == 10:
                for p in plain.parameters():  # an EMA step, through .data
                    p.data.mul_(0.5).add_(torch.ones_like(p), alpha=0.5)
            results[f"data_{i}"] = plain(x)

        doubles = Doubles().eval()
        for i, x in enumerate(xs[:8]):
            given = x.clone()
            results[f"doubles_{i}"] = doubles(given)
            results[f"doubled_{i}"] = given
    torch.save(results, out_path)
    print("frozen_state: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
