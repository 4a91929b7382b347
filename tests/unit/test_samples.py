"""Input normalization, signature keys, shape ranges and structure helpers."""

from __future__ import annotations

import dataclasses

import torch

from aitune.torch import _tree
from aitune.torch._samples import InputNormalizer, SignatureRecord, signature_key


class M(torch.nn.Module):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *rest: torch.Tensor) -> torch.Tensor:
        return x


def test_positional_and_keyword_normalize_alike() -> None:
    norm = InputNormalizer(M().forward)
    x, m = torch.ones(2), torch.ones(2)
    assert signature_key(norm.normalize((x,), {"mask": m})) == signature_key(norm.normalize((), {"mask": m, "x": x}))
    assert signature_key(norm.normalize((x, m), {})) == signature_key(norm.normalize((x,), {"mask": m}))
    # Extra positionals beyond named parameters are named after *rest.
    named = norm.normalize((x, m, x), {})
    assert named[2][0] == "*rest[0]"


def test_key_covers_dtype_rank_device_values_and_grad_mode() -> None:
    norm = InputNormalizer(M().forward)
    base = signature_key(norm.normalize((torch.ones(2, 3),), {}))
    assert base == signature_key(norm.normalize((torch.ones(5, 7),), {}))  # sizes are not in the key
    assert base != signature_key(norm.normalize((torch.ones(2, 3).half(),), {}))
    assert base != signature_key(norm.normalize((torch.ones(2, 3, 1),), {}))
    assert base != signature_key(norm.normalize((torch.ones(2, 3), None), {}))
    with torch.no_grad():
        assert base != signature_key(norm.normalize((torch.ones(2, 3),), {}))


def test_shape_ranges_and_most_common_shape() -> None:
    norm = InputNormalizer(M().forward)
    calls = [norm.normalize((torch.ones(b, 8),), {}) for b in (2, 4, 4, 3)]
    sig = SignatureRecord.from_call(signature_key(calls[0]), calls[0])
    for c in calls:
        sig.observe(_tree.shapes_of(c))
    assert sig.min_shapes == [[2, 8]] and sig.max_shapes == [[4, 8]]
    assert sig.dynamic_dims == [[0]]
    assert sig.most_common_shapes == ((4, 8),)
    assert sig.in_range(_tree.shapes_of(norm.normalize((torch.ones(3, 8),), {})))
    assert not sig.in_range(_tree.shapes_of(norm.normalize((torch.ones(5, 8),), {})))
    assert not sig.in_engine_range(((3, 8),))  # no engine yet
    assert sig.description[0]["name"] == "x"


@dataclasses.dataclass
class Batch:
    ids: torch.Tensor
    extra: dict[str, torch.Tensor]
    flag: bool = True


def test_tree_handles_nested_dataclasses_and_clones() -> None:
    b = Batch(torch.ones(2), {"k": [torch.zeros(1), (torch.ones(3),)]})
    copy = _tree.clone(b)
    assert isinstance(copy, Batch) and copy.flag is True
    b.ids.add_(1)
    assert float(copy.ids[0]) == 1.0
    assert len(list(_tree.tensors(b))) == 3
    paths = [p for p, _ in _tree.leaf_paths({"batch": b})]
    assert "batch.extra.k.1.0" in paths
    assert _tree.nbytes(b) == 4 * 6


def test_clone_outputs_copies_tensors_and_keeps_mutable_containers() -> None:
    t = torch.ones(2, requires_grad=True) * 2
    out = {"a": t, "b": [t, (t, None)]}
    copied = _tree.clone_outputs(out)
    assert copied is out
    assert copied["a"] is not t and copied["a"].data_ptr() != t.data_ptr()
    assert copied["a"].requires_grad  # autograd is kept for engine outputs
    assert copied["b"][1][0] is not t and copied["b"][1][1] is None
    b = Batch(t, {"k": [t]})
    assert _tree.clone_outputs(b).ids is not t


def test_value_blind_keys_ignore_argument_values_but_not_state_flags() -> None:
    from aitune.torch._samples import InputNormalizer, signature_key, value_blind

    class Cache:
        def __init__(self, ready: bool) -> None:
            self.keys = [torch.zeros(1)]
            self.ready = ready

    def forward(x: torch.Tensor, step: int, cache: Cache) -> None: ...

    norm = InputNormalizer(forward)

    def key(step: int, ready: bool) -> object:
        return signature_key(norm.normalize((torch.zeros(2), step, Cache(ready)), {}))

    assert key(1, True) != key(2, True) and value_blind(key(1, True)) == value_blind(key(2, True))
    assert value_blind(key(1, True)) != value_blind(key(1, False))
