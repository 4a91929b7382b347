"""ONNX export and ONNXRuntimeBackend for real, on the CPU execution provider."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aitune.torch._errors import BackendUnavailableError
from aitune.torch.backend import _optional
from aitune.torch.backend._flat import FlatIO, input_names
from aitune.torch.backend._onnx import export_onnx
from aitune.torch.backend._onnxruntime import ONNXRuntimeBackend, ONNXRuntimeBackendConfig

from .helpers import KwargsNet, Net, assert_same_structured, kwargs_calls, record, tune_net_in_jit_mode

ort = pytest.importorskip("onnxruntime")
CPU = torch.device("cpu")


def test_input_names_follow_how_the_call_passed_them() -> None:
    x = torch.zeros(1)
    named = (("a", x), ("b", (x, 2, x)), ("attention_mask", x), ("cfg", {"a": x}))
    assert input_names(named, 2) == ["args_0", "args_1_0", "args_1_2", "attention_mask", "cfg_a"]


def test_calls_of_one_signature_flatten_alike_however_arguments_are_passed() -> None:
    net = KwargsNet().eval()
    (call,) = kwargs_calls([(2, 5)])
    (ids, extra), kw = call
    _, samples = record(net, [call])
    io = FlatIO.from_samples(samples, net.forward)
    forms = [((ids, extra), kw), ((ids,), {"mask": kw["mask"], "extra": extra, "scale": 0.5}),
             ((), {"scale": 0.5, "mask": kw["mask"], "extra": extra, "ids": ids})]
    for args, kwargs in forms:
        flat = io.flatten(args, kwargs)
        assert [t is u for t, u in zip(flat, [ids, extra[0], kw["mask"]])] == [True, True, True]
    engine = ONNXRuntimeBackend().build(net, *record(net, [call]), CPU)
    with torch.no_grad():
        want = net(*call[0], **call[1])["pair"].hidden
    for args, kwargs in forms:
        torch.testing.assert_close(engine(*args, **kwargs)["pair"].hidden, want, rtol=1e-4, atol=1e-5)


def test_flat_io_ranges_and_dynamic_dims() -> None:
    net = KwargsNet().eval()
    _, samples = record(net, kwargs_calls([(2, 5), (4, 5), (2, 5), (3, 9)]))
    io = FlatIO.from_samples(samples, net.forward)
    assert io.input_names == ["args_0", "args_1_0", "mask"]
    assert io.dynamic_dims == [[0, 1], [0, 1], [0, 1]]
    assert io.shape_ranges[0] == ([2, 5], [2, 5], [4, 9])  # min, most common, max
    assert io.shape_ranges[1] == ([2, 5, 8], [2, 5, 8], [4, 9, 8])
    assert io.output_names == ["output_0", "output_1"]
    assert "args_0 int64 [2, 5]..[4, 9]" in io.describe_inputs()
    # Rebuilding puts the plain values back where they were.
    flat = io.flatten(samples[0].args, samples[0].kwargs)
    args, kwargs = io.unflatten_inputs(flat)
    assert args[1][1] == 3 and kwargs["scale"] == 0.5 and args[0] is flat[0]


@pytest.mark.parametrize("use_dynamo", [True, False])
def test_export_is_dynamic_where_samples_varied_and_matches_eager(tmp_path: Path, use_dynamo: bool) -> None:
    net = KwargsNet().eval()
    _, samples = record(net, kwargs_calls([(2, 5), (4, 7)]))
    path = tmp_path / "m.onnx"
    io = export_onnx(net, samples, path, use_dynamo=use_dynamo)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dims = {i.name: i.shape for i in session.get_inputs()}
    assert all(isinstance(d, str) for d in dims["args_0"])  # both dims varied: symbolic
    assert dims["args_1_0"][2] == 8  # the feature dim never varied: static
    # An unseen shape inside the recorded range, run in ONNX Runtime, matches eager.
    (call,) = kwargs_calls([(3, 6)])
    flat = io.flatten(*call)
    feeds = {name: t.numpy() for name, t in zip(io.input_names, flat) if name in dims}
    got = session.run(None, feeds)
    with torch.no_grad():
        want = net(*call[0], **call[1])["pair"]
    torch.testing.assert_close(torch.from_numpy(got[0]), want.hidden, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(got[1]), want.pooled, rtol=1e-4, atol=1e-5)


def test_engine_returns_eager_structure_and_serves_the_range() -> None:
    net = KwargsNet().eval()
    sig, samples = record(net, kwargs_calls([(2, 5), (4, 7)]))
    engine = ONNXRuntimeBackend().build(net, sig, samples, CPU)
    (call,) = kwargs_calls([(3, 6)])
    with torch.no_grad():
        assert_same_structured(engine(*call[0], **call[1]), net(*call[0], **call[1]))
    engine.release()


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    net = Net(width=16).eval()
    sig, samples = record(net, [((torch.randn(b, 16),), {}) for b in (2, 8)])
    backend = ONNXRuntimeBackend(graph_optimization_level="extended", intra_op_num_threads=1)
    engine = backend.build(net, sig, samples, CPU)
    engine.save(tmp_path)
    assert (tmp_path / "model.onnx").is_file()
    engine.release()
    loaded = ONNXRuntimeBackend(graph_optimization_level="extended").load(tmp_path, net, sig, samples, CPU)
    x = torch.randn(5, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="model.onnx"):
        backend.load(tmp_path / "missing", net, sig, samples, CPU)


def test_jit_mode_tunes_with_onnxruntime() -> None:
    entry, _ = tune_net_in_jit_mode(ONNXRuntimeBackend())
    assert entry["state"] == "tuned" and entry["backend"] == "ONNXRuntimeBackend", entry


def test_config_validation() -> None:
    cfg = ONNXRuntimeBackendConfig(providers=["cpu", ("cuda", {"device_id": 1})])
    assert cfg.providers == ["CPUExecutionProvider", ("CUDAExecutionProvider", {"device_id": 1})]
    with pytest.raises(ValueError, match="not an execution provider"):
        ONNXRuntimeBackendConfig(providers=["gpu"])
    with pytest.raises(ValueError, match="empty provider list"):
        ONNXRuntimeBackendConfig(providers=[])
    backend = ONNXRuntimeBackend(providers=["TensorrtExecutionProvider"])
    assert "not available" in (backend.unsupported_reason(CPU) or "")
    assert ONNXRuntimeBackend().unsupported_reason(CPU) is None


def test_missing_library_gives_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_optional, "installed", lambda name: name != "onnxruntime")
    reason = ONNXRuntimeBackend.unavailable_reason()
    assert reason is not None and "pip install 'aitune[onnxruntime]'" in reason
    with pytest.raises(BackendUnavailableError, match=r"aitune\[onnxruntime\]"):
        ONNXRuntimeBackend().build(Net(), *record(Net(), [((torch.randn(1, 16),), {})]), CPU)
