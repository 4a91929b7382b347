"""Compare a candidate's outputs with the recorded eager outputs.

Rules: same structure (container types, keys, lengths; state objects such as a transformers cache compared by
their attributes), same tensor dtypes, shapes, devices and `requires_grad` (an output that carries autograd in
eager must carry it from the engine); floating tensors within per-dtype (rtol, atol) element by element, or, for
rounding noise spread over a tensor, within rtol in relative L2 error with no outlier element; other tensors and
plain values exactly equal; no NaN or Inf where eager had none at that position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from aitune.torch import _tree

#: With the relative-L2 rule, no element may differ by more than this many rtol of the tensor's max magnitude.
OUTLIER_FACTOR = 10.0


@dataclass
class CheckResult:
    ok: bool
    max_abs_error: float = 0.0
    reason: str | None = None


class _Mismatch(Exception):
    pass


def _tolerance(dtype: torch.dtype, tolerances: dict[str, tuple[float, float]],
               compute_dtype: torch.dtype | None) -> tuple[float, float]:
    names = [str(dtype).removeprefix("torch.")]
    if compute_dtype is not None:
        names.append(str(compute_dtype).removeprefix("torch."))
    rtol, atol = 0.0, 0.0
    for name in names:  # the looser of the output dtype and the dtype the engine computes in
        r, a = tolerances.get(name, (1e-3, 1e-3))
        rtol, atol = max(rtol, r), max(atol, a)
    return rtol, atol


def _compare_tensor(path: str, ref: torch.Tensor, out: Any, tolerances: dict[str, tuple[float, float]],
                    compute_dtype: torch.dtype | None) -> float:
    if not isinstance(out, torch.Tensor):
        raise _Mismatch(f"{path}: expected a tensor, got {type(out).__name__}")
    if out.dtype != ref.dtype:
        raise _Mismatch(f"{path}: dtype {out.dtype} differs from eager {ref.dtype}")
    if tuple(out.shape) != tuple(ref.shape):
        raise _Mismatch(f"{path}: shape {tuple(out.shape)} differs from eager {tuple(ref.shape)}")
    if out.device != ref.device:
        raise _Mismatch(f"{path}: device {out.device} differs from eager {ref.device}")
    if out.requires_grad != ref.requires_grad:
        raise _Mismatch(f"{path}: requires_grad={out.requires_grad}, eager's output has requires_grad="
                        f"{ref.requires_grad} (an engine without autograd cannot serve a call that needs it)")
    out, ref = out.detach(), ref.detach()
    if out.is_complex() or out.is_floating_point():
        rtol, atol = _tolerance(ref.dtype, tolerances, compute_dtype)
        r = ref.to(torch.float64) if not ref.is_complex() else ref
        o = out.to(torch.float64) if not out.is_complex() else out
        ref_bad = ~torch.isfinite(r)
        out_bad = ~torch.isfinite(o)
        if bool((out_bad & ~ref_bad).any()):
            raise _Mismatch(f"{path}: NaN or Inf where eager had finite values")
        if bool(ref_bad.any()):
            same = torch.where(ref_bad, (o == r) | (torch.isnan(o) & torch.isnan(r)), torch.ones_like(ref_bad))
            if not bool(same.all()):
                raise _Mismatch(f"{path}: NaN/Inf positions differ from eager")
            r = torch.where(ref_bad, torch.zeros_like(r), r)
            o = torch.where(ref_bad, torch.zeros_like(o), o)
        if r.numel() == 0:
            return 0.0
        diff = (o - r).abs()
        err = float(diff.max())
        bound = atol + rtol * r.abs()
        if bool((diff <= bound).all()):
            return err
        # Low-precision rounding differences accumulate through deep networks and spread over the whole tensor.
        # Accept them when the tensor as a whole is within rtol (relative L2 error) and no single element is
        # off by more than OUTLIER_FACTOR * rtol of the tensor's largest magnitude: a wrong kernel fails both.
        scale = float(r.abs().max())
        rel_l2 = float(torch.linalg.vector_norm(o - r) / max(float(torch.linalg.vector_norm(r)), 1e-30))
        if rel_l2 <= rtol and err <= atol + OUTLIER_FACTOR * rtol * scale:
            return err
        worst = float((diff - bound).max())
        raise _Mismatch(f"{path}: max abs error {err:.3g} exceeds tolerance (rtol={rtol:g}, atol={atol:g}) by "
                        f"{worst:.3g}, and relative L2 error {rel_l2:.3g} (limit {rtol:g}) or outlier does too")
    if not torch.equal(out, ref.detach()):
        raise _Mismatch(f"{path}: {ref.dtype} values differ from eager")
    return 0.0


def _compare(path: str, ref: Any, out: Any, tolerances: dict[str, tuple[float, float]],
             compute_dtype: torch.dtype | None, _open: frozenset[int] = frozenset()) -> float:
    if isinstance(ref, torch.Tensor):
        return _compare_tensor(path, ref, out, tolerances, compute_dtype)
    if id(ref) in _open:
        return 0.0  # a cycle (an object holding itself): compared where it was first met
    ref_kids = _tree.parts(ref)
    if ref_kids is None:
        if isinstance(ref, float) and isinstance(out, float) and math.isnan(ref) and math.isnan(out):
            return 0.0
        if type(ref) is not type(out) or ref != out:
            raise _Mismatch(f"{path}: value {out!r} differs from eager {ref!r}")
        return 0.0
    if type(out) is not type(ref):
        raise _Mismatch(f"{path}: {type(out).__name__} differs from eager {type(ref).__name__}")
    out_kids = _tree.parts(out) or []
    if [k for k, _ in ref_kids] != [k for k, _ in out_kids]:
        raise _Mismatch(f"{path}: keys {[k for k, _ in out_kids]} differ from eager {[k for k, _ in ref_kids]}")
    worst = 0.0
    inner = _open | {id(ref)}
    for (key, r), (_, o) in zip(ref_kids, out_kids):
        where = f"{path}[{key!r}]" if path else f"[{key!r}]"
        worst = max(worst, _compare(where, r, o, tolerances, compute_dtype, inner))
    return worst


def compare_outputs(reference: Any, output: Any, tolerances: dict[str, tuple[float, float]],
                    compute_dtype: torch.dtype | None = None, path: str = "output") -> CheckResult:
    try:
        return CheckResult(True, _compare(path, reference, output, tolerances, compute_dtype))
    except _Mismatch as e:
        return CheckResult(False, reason=str(e))


def same_values(a: Any, b: Any) -> bool:
    """Exact equality of the tensors of two structures (NaN equals NaN): did a call change its inputs?"""
    ta, tb = list(_tree.all_tensors(a)), list(_tree.all_tensors(b))
    if len(ta) != len(tb):
        return False
    for x, y in zip(ta, tb):
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if x.is_floating_point() or x.is_complex():
            if not bool(((x == y) | (torch.isnan(x) & torch.isnan(y))).all()):
                return False
        elif not torch.equal(x, y):
            return False
    return True
