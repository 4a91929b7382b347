"""TorchInductorAotBackend for real: torch.export, then AOTInductor (C++ kernels compiled with gcc on CPU).

Each build compiles a shared library (~10-30 s on a 2-core CPU), so the models are tiny and each test that
builds builds once. The checks that reject a program before compiling it run without gcc.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from aitune.torch._errors import TuningError
from aitune.torch.backend._inductor_aot import TorchInductorAotBackend, TorchInductorAotBackendConfig

from .helpers import Net, tune_net_in_jit_mode
from .helpers import record as _record

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _skip_where_loading_packages_crashes(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Where torch's own `aoti_load_package` kills the process that loads a package (torch 2.11+cu130 on the GPU
    machine), the backend rejects its candidates instead; these tests of a working AOTInductor then skip, saying
    so. The test of that rejection itself replaces the child's code and is left alone."""
    from aitune.torch.backend import _inductor_aot

    if request.node.name == "test_a_package_that_crashes_its_loader_is_rejected_not_loaded":
        return
    if _inductor_aot.CHILD_LOADS.crash_reason("cpu"):
        pytest.skip(f"this torch cannot load AOTInductor packages: {_inductor_aot.CHILD_LOADS.crash_reason('cpu')}")
    load, child_code = _inductor_aot._load_safely, _inductor_aot._CHILD_LOAD

    def load_or_skip(package: Path, device: torch.device, **kwargs: Any) -> Any:
        try:
            return load(package, device, **kwargs)
        except TuningError as e:
            if "killed a test process" in str(e) and _inductor_aot._CHILD_LOAD == child_code:
                pytest.skip(f"this torch cannot load AOTInductor packages: {e}")
            raise

    monkeypatch.setattr(_inductor_aot, "_load_safely", load_or_skip)


def _eager(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    with torch.no_grad():
        return module(*args, **kwargs)


class Structured(torch.nn.Module):
    """Positional, nested and keyword inputs with plain values; a dict output holding a tuple and an int."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, pair: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None = None,
                scale: float = 1.0, shift: torch.Tensor | None = None) -> dict[str, Any]:
        a, b = pair
        h = self.fc(x) * scale + a
        if mask is not None:
            h = h * mask
        if shift is not None:
            h = h + shift
        return {"hidden": h, "parts": (h.sum(-1), b * 2), "count": 3}


@dataclasses.dataclass
class PooledOutput:
    logits: torch.Tensor
    pooled: torch.Tensor


class Pooled(torch.nn.Module):
    """Two inputs sharing batch and sequence sizes, a dataclass output."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> PooledOutput:
        h = torch.relu(self.proj(x)) * attention_mask.unsqueeze(-1)
        pooled = h.sum(1) / attention_mask.sum(1, keepdim=True).clamp(min=1)
        return PooledOutput(logits=self.head(pooled), pooled=pooled)


def test_linear_relu_matches_eager_and_round_trips(tmp_path: Path) -> None:
    net = Net(width=16).eval()
    sig, samples = _record(net, [((torch.randn(4, 16),), {}), ((torch.randn(4, 16),), {})])
    engine = TorchInductorAotBackend().build(net, sig, samples, CPU)
    assert engine.bakes_weights
    x = torch.randn(4, 16)
    out = engine(x)
    torch.testing.assert_close(out, _eager(net, x), rtol=1e-4, atol=1e-5)

    saved = tmp_path / "engine"
    saved.mkdir()
    engine.save(saved)
    assert sorted(p.name for p in saved.iterdir()) == ["aitune_aot.json", "model.pt2"]
    meta = json.loads((saved / "aitune_aot.json").read_text())
    assert meta["inputs"] == [{"name": "args_0", "dtype": "float32", "memory_format": "contiguous",
                               "min_shape": [4, 16], "max_shape": [4, 16], "dynamic_dims": []}]
    assert meta["num_outputs"] == 1 and meta["torch_version"] == torch.__version__
    assert not [n for n in zipfile.ZipFile(saved / "model.pt2").namelist() if n.endswith((".pkl", ".pickle"))]

    loaded = TorchInductorAotBackend().load(saved, net, sig, samples, CPU)
    assert torch.equal(loaded(x), out)

    # The build directory belongs to the engine; the loaded one reads the saved package.
    engine.release()
    assert not Path(engine.package).exists()  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="released"):
        engine(x)
    assert torch.equal(loaded(x), out)

    meta["torch_version"] = "0.0.1"
    (saved / "aitune_aot.json").write_text(json.dumps(meta))
    with pytest.raises(TuningError, match="built with torch 0.0.1.*delete it to rebuild"):
        TorchInductorAotBackend().load(saved, net, sig, samples, CPU)
    with pytest.raises(FileNotFoundError, match="no saved engine"):
        TorchInductorAotBackend().load(tmp_path, net, sig, samples, CPU)


def test_keyword_and_nested_inputs_with_structured_outputs() -> None:
    module = Structured().eval()

    def call(x: torch.Tensor) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (x, (torch.randn(3, 8), torch.randn(5))), {"mask": torch.rand(3, 8), "scale": 2.0}

    sig, samples = _record(module, [call(torch.randn(3, 8)), call(torch.randn(3, 8))])
    engine = TorchInductorAotBackend().build(module, sig, samples, CPU)

    x, pair, mask = torch.randn(3, 8), (torch.randn(3, 8), torch.randn(5)), torch.rand(3, 8)
    expected = _eager(module, x, pair, mask=mask, scale=2.0)
    for out in (engine(x, pair, mask=mask, scale=2.0),
                engine(x, pair, scale=2.0, mask=mask),          # keywords in another order
                engine(x=x, pair=pair, mask=mask, scale=2.0),   # positional parameters by keyword
                engine(x, pair, mask, 2.0)):
        assert set(out) == {"hidden", "parts", "count"} and isinstance(out["parts"], tuple)
        assert out["count"] == 3
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    # A non-contiguous input gets the layout the kernels were compiled for.
    x_t = torch.randn(8, 3).t()
    torch.testing.assert_close(engine(x_t, pair, mask=mask, scale=2.0),
                               _eager(module, x_t, pair, mask=mask, scale=2.0), rtol=1e-4, atol=1e-5)


def test_dynamic_batch_and_sequence_serve_unseen_sizes_in_range() -> None:
    module = Pooled().eval()

    def call(batch: int, seq: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (torch.randn(batch, seq, 8), (torch.rand(batch, seq) > 0.3).float()), {}

    # The batch-1 sample is not traced (torch.export would make that size static) but is served all the same.
    sig, samples = _record(module, [call(1, 4), call(2, 5), call(6, 3)])
    engine = TorchInductorAotBackend().build(module, sig, samples, CPU)
    assert [i["dynamic_dims"] for i in engine.meta["inputs"]] == [[0, 1], [0, 1]]  # type: ignore[attr-defined]
    assert engine.meta["inputs"][1]["min_shape"] == [1, 3]  # type: ignore[attr-defined]
    for batch, seq in ((4, 4), (3, 5), (6, 3), (2, 3), (1, 5)):
        args, _ = call(batch, seq)
        out = engine(*args)
        assert isinstance(out, PooledOutput) and out.logits.shape == (batch, 4)
        torch.testing.assert_close(dataclasses.asdict(out), dataclasses.asdict(_eager(module, *args)), rtol=1e-4,
                                   atol=1e-5)


def test_jit_mode_tunes_with_aot_inductor() -> None:
    entry, _ = tune_net_in_jit_mode(TorchInductorAotBackend())
    assert entry["state"] == "tuned" and entry["backend"] == "TorchInductorAotBackend", entry
    assert entry["candidates"][0]["ok"] and entry["candidates"][0]["latency_ms"] > 0


class Branchy(torch.nn.Module):
    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.shape[0] == 6) if self.op == "eq" else (x.shape[0] > 4):
            return x * 2
        return x * 3


@pytest.mark.parametrize(("op", "message"), [("eq", "became static at size 6"), ("gt", "was narrowed to 5..6")])
def test_a_size_the_code_branches_on_is_reported_before_compiling(op: str, message: str) -> None:
    module = Branchy(op)
    sig, samples = _record(module, [((torch.randn(6, 3),), {}), ((torch.randn(2, 3),), {})])
    with pytest.raises(TuningError, match=f"args_0 dim 0 \\(recorded 2..6\\) {message}"):
        TorchInductorAotBackend().build(module, sig, samples, CPU)


def test_sizes_of_zero_and_one_are_reported() -> None:
    module = torch.nn.ReLU()
    sig, samples = _record(module, [((torch.randn(1, 5),), {}), ((torch.randn(5, 1),), {})])
    with pytest.raises(TuningError, match=r"no recorded sample has every varying size at least 2.*"
                                          r"args_0 dim 0 \(1..5\), args_0 dim 1 \(1..5\)"):
        TorchInductorAotBackend().build(module, sig, samples, CPU)
    sig, samples = _record(module, [((torch.randn(0, 5),), {}), ((torch.randn(1, 5),), {})])
    with pytest.raises(TuningError, match=r"varied only between 0 and 1.*: args_0 dim 0 \(0..1\)"):
        TorchInductorAotBackend().build(module, sig, samples, CPU)


def test_static_mode_rejects_varied_shapes_and_opaque_inputs_are_rejected() -> None:
    net = Net(width=8)
    sig, samples = _record(net, [((torch.randn(2, 8),), {}), ((torch.randn(3, 8),), {})])
    with pytest.raises(TuningError, match=r"dynamic=False.*args_0 dim 0 \(2..3\)"):
        TorchInductorAotBackend(dynamic=False).build(net, sig, samples, CPU)

    class Opaque:
        pass

    class TakesObject(torch.nn.Module):
        def forward(self, x: torch.Tensor, extra: Any) -> torch.Tensor:
            return x + 1

    module = TakesObject()
    sig, samples = _record(module, [((torch.randn(2),), {"extra": Opaque()})])
    with pytest.raises(TuningError, match="input extra is a .*Opaque; only tensors and plain values"):
        TorchInductorAotBackend().build(module, sig, samples, CPU)


class DataDependent(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 0 else x


def test_export_failure_and_missing_compiler_are_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    module = DataDependent()
    sig, samples = _record(module, [((torch.ones(2),), {})])
    with pytest.raises(TuningError, match=r"torch.export \(strict_export=False\) failed for DataDependent"):
        TorchInductorAotBackend().build(module, sig, samples, CPU)

    assert TorchInductorAotBackend.unavailable_reason() is None  # gcc is installed where these tests run
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert "found no C++ compiler: install g++ or set CXX" in (TorchInductorAotBackend.unavailable_reason() or "")


def test_config_settings_and_description() -> None:
    backend = TorchInductorAotBackend()
    assert backend.kind == "aot" and backend.device_types == ("cpu", "cuda")
    assert backend.engine_settings() == {"dynamic": True, "inductor_configs": None, "strict_export": False}
    assert backend.describe() == "TorchInductorAotBackend"
    tuned = TorchInductorAotBackend(dynamic=False, inductor_configs={"max_autotune": True})
    assert tuned.describe() == "TorchInductorAotBackend(dynamic=False, inductor_configs={'max_autotune': True})"
    assert TorchInductorAotBackend(TorchInductorAotBackendConfig(strict_export=True)).engine_settings()[
        "strict_export"] is True
    with pytest.raises(ValidationError, match="may not set 'aot_inductor.output_path'"):
        TorchInductorAotBackend(inductor_configs={"aot_inductor.output_path": "/tmp/x"})
    with pytest.raises(ValidationError):
        TorchInductorAotBackend(dynamc=False)
    with pytest.raises(ValidationError):
        backend.config.dynamic = False
    assert "bounded by the recorded range" in (TorchInductorAotBackendConfig.model_fields["dynamic"].description
                                               or "")


def test_a_package_that_crashes_its_loader_is_rejected_not_loaded(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    """The first package of a device type is loaded in a child process: a native crash there (here: abort())
    rejects the candidate with the exit status, and this process goes on."""
    from aitune.torch.backend import _inductor_aot

    _inductor_aot.reset()
    monkeypatch.setattr(_inductor_aot, "_CHILD_LOAD", "import os; os.abort()")
    package = tmp_path / "model.pt2"
    package.write_bytes(b"not loaded here")
    with pytest.raises(TuningError, match=r"killed a test process \(exit -6"):
        _inductor_aot._load_safely(package, torch.device("cpu"))
    assert _inductor_aot.CHILD_LOADS.loaded == set()
    # Later candidates for that device type are rejected at once, without compiling another package.
    net = Net(width=8)
    sig, samples = _record(net, [((torch.randn(2, 8),), {})])
    with pytest.raises(TuningError, match="killed a test process.*an earlier package of this process"):
        TorchInductorAotBackend().build(net, sig, samples, CPU)
