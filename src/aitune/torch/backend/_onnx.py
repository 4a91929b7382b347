"""ONNX export of a module on its recorded samples, shared by the ONNX Runtime and TensorRT backends.

The module is exported as a `FlatModule` (see `_flat`): inputs named as the call passed them (`args_0`, keywords
by name), outputs `output_0`, ... A dimension is dynamic in the exported graph exactly when its size varied
across the recorded samples; the engines serve only shapes inside the recorded range (routing checks it), so
nothing wider is promised.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from aitune.torch._samples import Sample
from aitune.torch.backend._flat import FlatIO, FlatModule

logger = logging.getLogger(__name__)


def export_onnx(module: torch.nn.Module, samples: Sequence[Sample], path: Path, *, use_dynamo: bool = True,
                opset_version: int | None = None) -> FlatIO:
    """Export `module` to the ONNX file `path` (weights beside it when large), dynamic where samples varied."""
    io = FlatIO.from_samples(samples, module.forward)
    flat_module = FlatModule(module, io)
    example = tuple(t.clone() for t in io.flatten(samples[0].args, samples[0].kwargs))
    kwargs: dict[str, Any] = {"input_names": io.input_names, "output_names": io.output_names}
    if opset_version is not None:
        kwargs["opset_version"] = opset_version
    if use_dynamo:
        # Dim.AUTO lets torch.export infer which dynamic dims are equal (batch of input_ids and attention_mask).
        auto = torch.export.Dim.AUTO
        kwargs["dynamic_shapes"] = (tuple({d: auto for d in dims} for dims in io.dynamic_dims),)
        kwargs["dynamo"] = True
        kwargs["verbose"] = False
    else:
        kwargs["dynamic_axes"] = {name: {d: f"{name}_dim{d}" for d in dims}
                                  for name, dims in zip(io.input_names, io.dynamic_dims) if dims}
        kwargs["dynamo"] = False
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(flat_module, example, str(path), **kwargs)
    logger.debug("exported %s to %s: inputs %s", type(module).__name__, path, io.describe_inputs())
    return io


def check_external_data(path: Path) -> None:
    """Refuse an ONNX file whose external-data references leave its own directory (an absolute path, `..`, a
    link): loading it would read any file the process can read into the model's weights."""
    import onnx

    root = path.parent.resolve()
    model = onnx.load(str(path), load_external_data=False)
    tensors = _all_tensors(model.graph.initializer, model.graph.sparse_initializer, model.graph.node)
    for function in model.functions:
        tensors += _all_tensors([], [], function.node)
    for tensor in tensors:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = root / location
        if (not location or Path(location).is_absolute() or ".." in Path(location).parts
                or target.is_symlink() or root not in target.resolve().parents or not target.is_file()):
            raise ValueError(f"refusing {path.name}: not a file beside the model: tensor {tensor.name!r} reads "
                             f"its data from {location!r}")


def _all_tensors(initializers: Any, sparse: Any, nodes: Any) -> list[Any]:
    """Every TensorProto of a graph or function: initializers, sparse ones, and node attributes (dense and sparse
    tensors), subgraphs included."""
    found = list(initializers)
    for item in sparse:
        found += [item.values, item.indices]
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                found.append(attr.t)
            found += list(attr.tensors)
            if attr.HasField("sparse_tensor"):
                found += [attr.sparse_tensor.values, attr.sparse_tensor.indices]
            for item in attr.sparse_tensors:
                found += [item.values, item.indices]
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                found += _all_tensors(sub.initializer, sub.sparse_initializer, sub.node)
    return found
