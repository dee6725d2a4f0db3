"""Slice rules against brute force on all 256 codes (spec sections 3.1, 3.2 and 7)."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from matq_compile import slicing

CODES = np.arange(256, dtype=np.uint8)


def brute_round(q: int, r: int) -> int:
    """Search c in 0..2^r for the nearest c * 2^d to q (ties to the larger c), then clamp to 2^r - 1."""
    d = 8 - r
    nearest = min(range(2**r + 1), key=lambda c: (abs(Fraction(q) - c * 2**d), -c))
    return min(nearest, 2**r - 1)


@pytest.mark.parametrize("r", range(2, 9))
def test_round_rule_matches_brute_force(r):
    got = slicing.slice_codes(CODES, r, "round")
    want = np.array([brute_round(int(q), r) for q in CODES])
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("r", range(2, 9))
def test_midpoint_rule_matches_brute_force(r):
    d = 8 - r
    got = slicing.slice_codes(CODES, r, "midpoint")
    want = np.array([int(q) // 2**d for q in CODES])  # the r most significant bits
    np.testing.assert_array_equal(got, want)
    if d:  # reconstruct at the centre of the truncation bucket: its lowest code + 2^(d-1), in parent units
        w = slicing.dequant_parent(CODES, np.float64(1.0), 128.0, r, "midpoint")
        np.testing.assert_array_equal(w, np.array([(int(q) >> d << d) + 2 ** (d - 1) - 128 for q in CODES]))


@pytest.mark.parametrize("rule", ["round", "midpoint"])
def test_eight_bit_slice_is_identity(rule):
    np.testing.assert_array_equal(slicing.slice_codes(CODES, 8, rule), CODES)
    np.testing.assert_array_equal(slicing.dequant_parent(CODES, np.float64(0.5), 128.0, 8, rule),
                                  0.5 * (CODES.astype(np.float64) - 128))


@pytest.mark.parametrize("r", range(2, 8))
def test_which_bits_each_rule_reads(r):
    """round depends only on q >> (d-1) (r+1 bits); midpoint only on q >> d (r bits)."""
    d = 8 - r
    rnd = slicing.slice_codes(CODES, r, "round")
    mid = slicing.slice_codes(CODES, r, "midpoint")
    for key, out in ((CODES >> (d - 1), rnd), (CODES >> d, mid)):
        for k in np.unique(key):
            assert len(np.unique(out[key == k])) == 1
    # and round really needs the extra bit: some pair with equal q >> d differs
    assert any(len(np.unique(rnd[(CODES >> d) == k])) > 1 for k in np.unique(CODES >> d))


@pytest.mark.parametrize("r,step,top", [(8, 1, 127), (6, 4, 124), (4, 16, 112), (3, 32, 96), (2, 64, 64)])
def test_round_grid_table(r, step, top):
    """Spec section 3.1: representable values (x s) of a symmetric parent (z = 128)."""
    vals = slicing.grid_values(r, "round", 128)
    np.testing.assert_array_equal(vals, np.arange(-128, top + 1, step, dtype=np.float64))
    # max positive as a fraction of absmax (s = 2 absmax / 255): 0.996, 0.973, 0.878, 0.753, 0.502
    assert round(top * 2 / 255, 3) == {8: 0.996, 6: 0.973, 4: 0.878, 3: 0.753, 2: 0.502}[r]


@pytest.mark.parametrize("r,expected", [(2, [-96, -32, 32, 96]), (3, list(range(-112, 113, 32)))])
def test_midpoint_grid_is_symmetric(r, expected):
    np.testing.assert_array_equal(slicing.grid_values(r, "midpoint", 128), np.array(expected, dtype=np.float64))


@pytest.mark.parametrize("rule", ["round", "midpoint"])
@pytest.mark.parametrize("r", range(2, 9))
def test_affine_view_matches_closed_form(rule, r):
    rng = np.random.default_rng(r)
    s = rng.uniform(1e-3, 1e-1, size=256)
    z = rng.integers(0, 256, size=256).astype(np.float64)
    w = slicing.dequant_parent(CODES, s, z, r, rule)
    affine = slicing.slice_scale(s, r) * (slicing.slice_codes(CODES, r, rule).astype(np.float64)
                                          - slicing.slice_zero_point(z, r, rule))
    np.testing.assert_allclose(affine, w, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("rule", ["round", "midpoint"])
@pytest.mark.parametrize("r", range(2, 9))
def test_numpy_and_torch_agree(rule, r):
    q = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    assert torch.equal(slicing.slice_codes(q, r, rule), torch.from_numpy(slicing.slice_codes(CODES, r, rule)))
    s = torch.full((256,), 0.01, dtype=torch.float64)
    np.testing.assert_array_equal(slicing.dequant_parent(q, s, 128.0, r, rule).numpy(),
                                  slicing.dequant_parent(CODES, s.numpy(), 128.0, r, rule))


@pytest.mark.parametrize("bad", [1, 9, 0, -3, 2.0, True, "4", None])
def test_bad_bits_rejected(bad):
    with pytest.raises(ValueError, match="bits must be an integer in 2..8"):
        slicing.slice_codes(CODES, bad)


def test_bad_rule_rejected():
    with pytest.raises(ValueError, match="unknown slice rule 'truncate'"):
        slicing.slice_codes(CODES, 4, "truncate")
