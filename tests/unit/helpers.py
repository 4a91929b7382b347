"""Small models and a backend at the seam, for unit tests of aitune's own logic."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field

from aitune.torch._samples import Sample, SignatureRecord
from aitune.torch.backend import Backend, BackendConfig, Engine


class Block(torch.nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(width, width)
        self.act = torch.nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x)) + x


class Net(torch.nn.Module):
    def __init__(self, width: int = 16, depth: int = 2) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(width) for _ in range(depth)])
        self.head = torch.nn.Linear(width, 4)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x) * scale


class FakeConfig(BackendConfig):
    latency_ms: float = Field(default=0.0, description="sleep per call, to order candidates by speed")
    error: float = Field(default=0.0, description="added to every output")
    fail_build: bool = False
    fail_run: bool = False
    new_sizes: bool = Field(default=False, description="claim to serve sizes beyond the checked range")
    error_above: int | None = Field(default=None, description="add 1.0 to outputs when dim 0 exceeds this")
    graphs: bool = Field(default=False, description="claim to replay CUDA graphs (thread-bound engines)")


class _FakeEngine(Engine):
    def __init__(self, module: torch.nn.Module, cfg: FakeConfig, calls: list[str]) -> None:
        self.module = module
        self.cfg = cfg
        self.calls = calls

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(type(self.module).__name__)
        if self.cfg.latency_ms or FakeBackend.slow_ms:
            time.sleep((self.cfg.latency_ms + FakeBackend.slow_ms) / 1000)
        if self.cfg.fail_run:
            raise RuntimeError("engine exploded")
        out = torch.nn.Module._wrapped_call_impl(self.module, *args, **kwargs)
        if self.cfg.error_above is not None and args[0].shape[0] > self.cfg.error_above:
            out = out + 1.0
        return out + self.cfg.error if self.cfg.error else out


class FakeBackend(Backend):
    """Runs the module eagerly (plus an optional error) and counts engine calls; timing is faked."""

    config_class = FakeConfig
    calls: ClassVar[list[str]] = []
    builds: ClassVar[list[str]] = []
    #: Extra sleep of every engine call, set by a test once tuning is over: an engine slower in place than timed.
    slow_ms: ClassVar[float] = 0.0

    def serves_new_sizes(self, device: torch.device) -> bool:
        return bool(self.config.new_sizes)  # type: ignore[attr-defined]

    def uses_cuda_graphs(self, device: torch.device) -> bool:
        return bool(self.config.graphs)  # type: ignore[attr-defined]

    def build(self, module: torch.nn.Module, signature: SignatureRecord, samples: Sequence[Sample],
              device: torch.device) -> Engine:
        FakeBackend.builds.append(type(module).__name__)
        if self.config.fail_build:  # type: ignore[attr-defined]
            raise RuntimeError("cannot build this")
        return _FakeEngine(module, self.config, FakeBackend.calls)  # type: ignore[arg-type]


def only_signature(wrapper: Any, index: int = 0) -> SignatureRecord:
    """The signature of an `ait.Module` wrapper (its first, or the one at `index` in call order)."""
    from aitune.torch._explicit._module import runtime_of

    rt = runtime_of(wrapper)
    assert rt is not None, f"{type(wrapper).__name__} is not an ait.Module"
    return list(rt.signatures.values())[index]


def record(module: torch.nn.Module, calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]]
           ) -> tuple[SignatureRecord, list[Sample]]:
    """Record `calls` of `module` eagerly, as the JIT hook does: one signature, one sample per call."""
    from aitune.torch import _tree
    from aitune.torch._samples import InputNormalizer, signature_key

    normalizer = InputNormalizer(module.forward)
    sig: SignatureRecord | None = None
    samples: list[Sample] = []
    with torch.no_grad():
        for args, kwargs in calls:
            named = normalizer.normalize(args, kwargs)
            if sig is None:
                sig = SignatureRecord.from_call(signature_key(named), named)
            sig.observe(_tree.shapes_of(named))
            out = torch.nn.Module._wrapped_call_impl(module, *args, **kwargs)
            samples.append(Sample(_tree.clone(args), _tree.clone(kwargs), _tree.clone(out)))
    assert sig is not None
    sig.samples = samples
    return sig, samples


@dataclasses.dataclass
class Pair:
    hidden: torch.Tensor
    pooled: torch.Tensor


class KwargsNet(torch.nn.Module):
    """Keyword tensors, a nested tuple input with a plain value; out: a dict holding a dataclass and a plain int."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8)
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, ids: torch.Tensor, extra: tuple[torch.Tensor, int], mask: torch.Tensor | None = None,
                scale: float = 1.0) -> dict[str, Any]:
        h = self.proj(self.embed(ids)) * scale + extra[0] * extra[1]
        if mask is not None:
            h = h * mask.unsqueeze(-1)
        return {"pair": Pair(h, h.mean(1)), "n": 7}


def kwargs_calls(shapes: Sequence[tuple[int, int]]) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Calls of KwargsNet at these (batch, sequence) sizes."""
    return [((torch.randint(0, 50, (b, s)), (torch.randn(b, s, 8), 3)), {"mask": torch.ones(b, s), "scale": 0.5})
            for b, s in shapes]


def assert_same_structured(out: dict[str, Any], want: dict[str, Any]) -> None:
    """KwargsNet outputs: the same structure and plain leaf, tensors close."""
    assert isinstance(out["pair"], Pair) and out["n"] == want["n"] == 7
    torch.testing.assert_close(out["pair"].hidden, want["pair"].hidden, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["pair"].pooled, want["pair"].pooled, rtol=1e-4, atol=1e-5)


def tune_net_in_jit_mode(backend: Backend) -> tuple[dict[str, Any], Net]:
    """Enable JIT mode with `backend` as the only candidate, run a Net until it is tuned (2 calls recorded, 2
    more), check its outputs match eager, and return its report entry and the Net."""
    from aitune.torch.config import config as global_config
    from aitune.torch.jit import _report, enable_jit_tuning
    from aitune.torch.jit.config import config as jit_config

    jit_config.backends = [backend]
    jit_config.min_samples = 2
    global_config.min_speedup = 1e-6  # CPU timings of a tiny model are noise; the test is about the pipeline
    enable_jit_tuning()
    net = Net(width=32).eval()
    xs = [torch.randn(8, 32) for _ in range(4)]
    with torch.no_grad():
        outs = [net(x) for x in xs]
        expected = [torch.nn.Module._wrapped_call_impl(net, x) for x in xs]
    for out, exp in zip(outs, expected):
        torch.testing.assert_close(out, exp, rtol=1e-4, atol=1e-5)
    entry: dict[str, Any] = {m["name"]: m for m in _report.build_report()["modules"]}["Net"]
    return entry, net


PAYLOAD_C = r"""
#include <stdio.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) { fputs("planted code ran\n", f); fclose(f); }
}
"""


def plant(package: Path, library: Path) -> None:
    """Replace every shared library inside an AOTInductor package with `library`."""
    with zipfile.ZipFile(package) as src:
        members = [(i, library.read_bytes() if i.filename.endswith(".so") else src.read(i)) for i in src.infolist()]
    with zipfile.ZipFile(package, "w") as out:
        for info, data in members:
            out.writestr(info, data)


def payload_is_live(package: Path, marker: Path) -> None:
    """Prove the forged package runs its code when loaded unchecked (in a child process), then reset."""
    code = ("import sys\nfrom torch._inductor import aoti_load_package\ntry:\n    aoti_load_package(sys.argv[1])\n"
            "except Exception:\n    pass\n")
    subprocess.run([sys.executable, "-c", code, str(package)], capture_output=True, check=False, timeout=300)
    assert marker.exists(), "the planted library should run when a package is loaded without aitune's checks"
    marker.unlink()
