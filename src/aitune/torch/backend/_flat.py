"""Calls of one input signature as flat lists of named tensors, and flat outputs back to eager's structure.

A module's call may take positional and keyword arguments, nested in tuples, lists and dicts, with plain values
beside the tensors, and return any such structure. Exporters and compilers (ONNX, AOTInductor, Torch-TensorRT)
take and return flat tuples of tensors. `FlatIO` maps one to the other: inputs are named as they were passed
(`args_0`, `args_1_0` for the first tensor inside the second positional argument, `attention_mask` for a keyword),
plain values are baked in as constants (they are part of the input signature, so an engine never sees others),
and the outputs are rebuilt in the structure eager returned. `FlatModule` is the module as those tools see it.

Known limits: tensors inside opaque objects (other than tuples, lists, dicts, namedtuples and dataclasses)
are not seen; an output tensor that aliases an input comes back as a new tensor.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from aitune.torch import _tree
from aitune.torch._samples import InputNormalizer, Sample

_NAME_CHARS = re.compile(r"[^0-9A-Za-z_]")


def _leaf_names(obj: Any, prefix: str) -> list[str]:
    """Names of the tensor leaves of `obj`, in `_tree.tensors` order."""
    if isinstance(obj, torch.Tensor):
        return [prefix]
    kids = _tree.children(obj)
    if kids is None:
        return []
    names: list[str] = []
    for key, child in kids:
        names.extend(_leaf_names(child, f"{prefix}_{_NAME_CHARS.sub('_', str(key))}"))
    return names


def input_names(named: Sequence[tuple[str, Any]], n_positional: int) -> list[str]:
    """`args_0`, `args_1_0`, ... for tensors passed positionally, the keyword (sanitized) for the others.

    `named` is the normalized call (`InputNormalizer.normalize`): positional values first, then keywords in
    forward's parameter order.
    """
    names: list[str] = []
    for i, (key, value) in enumerate(named):
        if i < n_positional:
            names.extend(_leaf_names(value, f"args_{i}"))
        else:
            names.extend(n.removeprefix("_") for n in _leaf_names(value, f"_{_NAME_CHARS.sub('_', key)}"))
    return names


def _meta(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype, device="meta")


@dataclass
class FlatIO:
    """How one input signature's calls map to flat named tensors, and flat outputs back to eager's structure.

    Calls are normalized against forward's parameters first, so `m(x, mask=k)`, `m(mask=k, x=x)` and
    `m(x=x, mask=k)` (one signature) all flatten to the same order.
    """

    input_names: list[str]
    output_names: list[str]
    #: The first sample's normalized values with every tensor replaced by a meta tensor (plain values kept),
    #: their parameter names, and how many of them it passed positionally.
    inputs_template: list[Any]
    keys: list[str]
    n_positional: int
    #: Eager's output structure with every tensor replaced by a meta tensor.
    outputs_template: Any
    #: Per input, the dimensions whose size varied across the samples.
    dynamic_dims: list[list[int]]
    #: Per input: (min shape, most common shape, max shape) over the samples.
    shape_ranges: list[tuple[list[int], list[int], list[int]]]
    #: Per input and output: dtype.
    input_dtypes: list[torch.dtype]
    output_dtypes: list[torch.dtype]
    normalizer: InputNormalizer

    @classmethod
    def from_samples(cls, samples: Sequence[Sample], forward: Any = None) -> FlatIO:
        """Layout of the samples' signature; `forward` is the module's forward (for parameter names; without it,
        calls must pass their arguments the way the first sample did)."""
        if not samples:
            raise ValueError("no recorded sample to export from")
        normalizer = InputNormalizer(forward)
        first = samples[0]
        named = normalizer.normalize(first.args, first.kwargs)
        names = input_names(named, len(first.args))
        flat_inputs = [list(_tree.tensors([v for _, v in normalizer.normalize(s.args, s.kwargs)])) for s in samples]
        if len(names) != len(flat_inputs[0]) or not names:
            raise ValueError("the module takes no tensor input that can be named" if not names else
                             "tensor inputs could not be named consistently")
        outputs = list(_tree.tensors(first.outputs))
        if not outputs:
            raise ValueError("the module returns no tensor")
        shape_lists = [tuple(tuple(t.shape) for t in flat) for flat in flat_inputs]
        counts: dict[tuple[tuple[int, ...], ...], int] = {}
        for shapes in shape_lists:
            counts[shapes] = counts.get(shapes, 0) + 1
        common = max(counts.items(), key=lambda kv: kv[1])[0]
        ranges: list[tuple[list[int], list[int], list[int]]] = []
        dynamic: list[list[int]] = []
        for i in range(len(names)):
            lo = [min(s[i][d] for s in shape_lists) for d in range(len(common[i]))]
            hi = [max(s[i][d] for s in shape_lists) for d in range(len(common[i]))]
            ranges.append((lo, list(common[i]), hi))
            dynamic.append([d for d, (a, b) in enumerate(zip(lo, hi)) if a != b])
        return cls(input_names=names, output_names=[f"output_{i}" for i in range(len(outputs))],
                   inputs_template=_tree.tree_map(_meta, [v for _, v in named]), keys=[k for k, _ in named],
                   n_positional=len(first.args), outputs_template=_tree.tree_map(_meta, first.outputs),
                   dynamic_dims=dynamic, shape_ranges=ranges, input_dtypes=[t.dtype for t in flat_inputs[0]],
                   output_dtypes=[t.dtype for t in outputs], normalizer=normalizer)

    def flatten(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
        """The call's tensors, in `input_names` order, however the call passed them."""
        if not kwargs:  # positional values are already in normalized order
            return list(_tree.tensors(args))
        return list(_tree.tensors([v for _, v in self.normalizer.normalize(args, kwargs)]))

    def unflatten_inputs(self, flat: Sequence[torch.Tensor]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """A call (args, kwargs) in the first sample's form, with `flat` as its tensors."""
        it = iter(flat)
        values = _tree.tree_map(lambda _: next(it), self.inputs_template)
        n = self.n_positional
        return tuple(values[:n]), dict(zip(self.keys[n:], values[n:]))

    def unflatten_outputs(self, flat: Sequence[torch.Tensor]) -> Any:
        """Eager's output structure around `flat` (in `output_names` order)."""
        if len(flat) != len(self.output_names):
            raise RuntimeError(f"engine returned {len(flat)} outputs, expected {len(self.output_names)}")
        it = iter(flat)
        return _tree.tree_map(lambda _: next(it), self.outputs_template)

    def describe_inputs(self) -> str:
        """`args_0 float16 [1, 3, 224, 224]..[8, 3, 224, 224]` per input, for the tuning log."""
        parts = []
        for name, dtype, (lo, _, hi) in zip(self.input_names, self.input_dtypes, self.shape_ranges):
            shape = f"{lo}" if lo == hi else f"{lo}..{hi}"
            parts.append(f"{name} {str(dtype).removeprefix('torch.')} {shape}")
        return ", ".join(parts)


class FlatModule(torch.nn.Module):
    """`forward(*flat_tensors) -> tuple of tensors` around a module: what exporters and compilers see."""

    def __init__(self, module: torch.nn.Module, io: FlatIO) -> None:
        super().__init__()
        self.module = module
        self._io = io
        self.training = module.training  # never .eval()/.train() here: they would change the user's module

    def forward(self, *flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        args, kwargs = self._io.unflatten_inputs(flat)
        # forward: aitune runs the module's own hooks around the engine; its patched __call__ is not re-entered.
        out = self.module.forward(*args, **kwargs)
        return tuple(_tree.tensors(out))
