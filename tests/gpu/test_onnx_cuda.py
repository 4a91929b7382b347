"""The ONNX path on CUDA modules: what TensorRT and ONNX Runtime build from (run on the GPU machine)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aitune.torch.backend import ONNXRuntimeBackend
from aitune.torch.backend._onnx import export_onnx

from ..unit.helpers import Net, record

pytestmark = pytest.mark.gpu
ort = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("use_dynamo", [True, False])
def test_fp16_cuda_module_exports_with_dynamic_batch(tmp_path: Path, use_dynamo: bool) -> None:
    net = Net(width=64).eval().cuda().half()
    _, samples = record(net, [((torch.randn(b, 64, device="cuda", dtype=torch.half),), {}) for b in (1, 8)])
    path = tmp_path / "net.onnx"
    io = export_onnx(net, samples, path, use_dynamo=use_dynamo)
    assert io.input_names == ["args_0"] and io.dynamic_dims == [[0]]
    # ONNX Runtime here has only the CPU provider: run the exported fp16 graph there, on a batch never recorded.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)
    x = torch.randn(5, 64, device="cuda", dtype=torch.half)
    (got,) = session.run(None, {"args_0": x.cpu().numpy()})
    with torch.no_grad():
        want = net(x)
    torch.testing.assert_close(torch.from_numpy(got), want.cpu(), rtol=2e-2, atol=2e-2)


def test_onnxruntime_backend_declines_cuda_without_a_cuda_provider() -> None:
    reason = ONNXRuntimeBackend().unsupported_reason(torch.device("cuda"))
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert reason is None
    else:
        assert reason is not None and "onnxruntime-gpu" in reason
