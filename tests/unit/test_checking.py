"""Output comparison rules used to accept or reject a candidate."""

from __future__ import annotations

import collections

import torch

from aitune.torch._checking import compare_outputs, same_values

TOL = {"float32": (1e-3, 1e-3), "float16": (1e-2, 1e-2)}


def test_close_values_pass_and_report_error() -> None:
    ref = torch.ones(3)
    res = compare_outputs(ref, ref + 1e-5, TOL)
    assert res.ok and 0 < res.max_abs_error < 2e-5


def test_too_far_fails_with_a_reason() -> None:
    res = compare_outputs({"a": torch.ones(3)}, {"a": torch.ones(3) + 0.1}, TOL)
    assert not res.ok and "['a']" in (res.reason or "") and "tolerance" in (res.reason or "")


def test_dtype_shape_structure_mismatches_fail() -> None:
    x = torch.ones(2, 3)
    assert "dtype" in (compare_outputs(x, x.half(), TOL).reason or "")
    assert "shape" in (compare_outputs(x, x.reshape(3, 2), TOL).reason or "")
    assert not compare_outputs((x, x), [x, x], TOL).ok
    assert not compare_outputs({"a": x}, {"b": x}, TOL).ok
    assert not compare_outputs((x, 1), (x, 2), TOL).ok


def test_nan_or_inf_where_eager_had_none_fails() -> None:
    ref = torch.ones(3)
    bad = ref.clone()
    bad[1] = float("nan")
    assert "NaN" in (compare_outputs(ref, bad, TOL).reason or "")
    ref_nan = bad.clone()
    assert compare_outputs(ref_nan, bad.clone(), TOL).ok


def test_integer_outputs_must_be_exact() -> None:
    ref = torch.tensor([1, 2, 3])
    assert compare_outputs(ref, ref.clone(), TOL).ok
    assert not compare_outputs(ref, torch.tensor([1, 2, 4]), TOL).ok


def test_half_precision_uses_its_own_tolerance_and_compute_dtype_loosens() -> None:
    ref = torch.ones(4)
    out = ref + 5e-3
    assert not compare_outputs(ref, out, TOL).ok
    assert compare_outputs(ref, out, TOL, compute_dtype=torch.float16).ok


def test_namedtuple_and_model_output_like_structures() -> None:
    Pair = collections.namedtuple("Pair", "a b")
    x = torch.ones(2)
    assert compare_outputs(Pair(x, x), Pair(x, x + 1e-6), TOL).ok
    assert not compare_outputs(Pair(x, x), (x, x), TOL).ok


def test_same_values_detects_in_place_changes() -> None:
    a = (torch.ones(3), {"m": torch.zeros(2)})
    b = (torch.ones(3), {"m": torch.zeros(2)})
    assert same_values(a, b)
    b[1]["m"][0] = 1
    assert not same_values(a, b)


def test_spread_rounding_noise_passes_but_a_wrong_region_fails() -> None:
    torch.manual_seed(0)
    ref = torch.randn(1000) * 10
    noisy = ref + torch.randn(1000) * 0.02  # ~0.2% relative noise everywhere; near-zero elements fail rtol alone
    tight = {"float32": (1e-2, 1e-3)}
    res = compare_outputs(ref, noisy, tight)
    assert res.ok, res.reason
    wrong = ref.clone()
    wrong[:50] = 0  # a wrong region: large relative L2 error
    assert not compare_outputs(ref, wrong, tight).ok
    spike = ref.clone()
    spike[3] += 30.0  # one element far off: small L2 error, but an outlier
    assert not compare_outputs(ref, spike, tight).ok
