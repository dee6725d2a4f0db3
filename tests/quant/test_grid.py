"""Group grids (spec section 2), RTN codes and the b-bit -> parent storage identity, against numpy float64."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from matq_compile import slicing
from matq_compile.config import QuantSpec
from matq_compile.quant import grid, quantize_weight


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
def test_sym_params_match_formula(bits, rng):
    w = rng.standard_normal((16, 64)).astype(np.float32)
    w[3] = 0.0
    s, z = grid.find_params(torch.from_numpy(w), bits, sym=True)
    amax = np.abs(w).max(axis=1).astype(np.float64)
    amax[amax == 0] = 1.0
    d = 8 - bits
    want = (2 * amax / (2**bits - 1) / 2**d).astype(np.float16).astype(np.float64) * 2**d
    np.testing.assert_array_equal(s.double().numpy(), want)
    assert torch.all(z == 2 ** (bits - 1))


@pytest.mark.parametrize("bits", [8, 3])
def test_asym_params_include_zero_and_fit(bits, rng):
    w = rng.standard_normal((32, 64)).astype(np.float32)
    w[0] = np.abs(w[0]) + 1.0  # all positive: range must still include 0
    w[1] = -np.abs(w[1]) - 1.0  # all negative
    w[2] = 0.0  # both ends 0: [-1, 1]
    s, z = grid.find_params(torch.from_numpy(w), bits, sym=False)
    maxq = 2**bits - 1
    assert torch.all((z >= 0) & (z <= maxq)) and torch.all(z == torch.round(z))
    xmin = np.minimum(w.min(1), 0).astype(np.float64)
    xmax = np.maximum(w.max(1), 0).astype(np.float64)
    xmin[2], xmax[2] = -1.0, 1.0
    np.testing.assert_allclose(s.double().numpy(), (xmax - xmin) / maxq, rtol=1e-3)
    assert float(z[0]) == 0 and float(z[1]) == maxq
    # every weight is representable within half a step (no clipping beyond rounding)
    q = grid.rtn_codes(torch.from_numpy(w), s[:, None], z[:, None], bits)
    err = (torch.from_numpy(w) - grid.dequant_codes(q, s[:, None], z[:, None])).abs()
    assert torch.all(err <= 0.5 * s[:, None] * (1 + 1e-3) + 1e-3 * s[:, None])


def test_scales_are_fp16_exact_and_never_zero():
    w = torch.tensor([[1e-12, -1e-12], [3.0, 1.0]])
    s, _ = grid.find_params(w, 8, sym=True)
    assert torch.all(s > 0)
    assert torch.equal(s.half().float(), s)
    with pytest.raises(ValueError, match="too large for fp16"):
        grid.find_params(torch.tensor([[1e9, 0.0]]), 8, sym=True)


def test_rtn_codes_round_half_even_and_clamp():
    s, z = torch.tensor(1.0), torch.tensor(128.0)
    x = torch.tensor([0.5, 1.5, -0.5, 200.0, -300.0, 127.4])
    assert grid.rtn_codes(x, s, z).tolist() == [128, 130, 128, 255, 0, 255]


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("bits", range(2, 8))
def test_b_bit_grid_stored_as_parent_is_exact(bits, sym, rng):
    """S_b(q_b << d) = q_b, and s (q8 - z8) = s_b (q_b - z_b) exactly in fp32."""
    w = torch.from_numpy(rng.standard_normal((8, 64)).astype(np.float32))
    s_b, z_b = grid.find_params(w, bits, sym)
    q_b = grid.rtn_codes(w, s_b[:, None], z_b[:, None], bits)
    q8, s8, z8 = grid.to_parent(q_b, s_b, None if sym else z_b, bits)
    assert q8.dtype == torch.uint8 and s8.dtype == torch.float16
    assert torch.equal(slicing.slice_codes(q8, bits, "round").long(), q_b.long())
    z_parent = torch.full_like(s_b, 128.0) if sym else z8.double()
    w_parent = slicing.dequant_parent(q8, s8.double()[:, None], z_parent[:, None], bits, "round")
    assert torch.equal(w_parent.float(), grid.dequant_codes(q_b, s_b[:, None], z_b[:, None]))


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("g", [32, -1])
def test_rtn_method_matches_numpy(sym, g, rng):
    W = rng.standard_normal((24, 96)).astype(np.float32)
    res = quantize_weight(torch.from_numpy(W), None, QuantSpec(method="rtn", group_size=g, sym=sym))
    gs = 96 if g == -1 else g
    Wg = W.reshape(24, 96 // gs, gs)
    s = res.scales.float().numpy()[..., None]
    z = 128.0 if sym else res.zeros.float().numpy()[..., None]
    q = np.clip(np.round(Wg / s) + z, 0, 255).reshape(24, 96)  # np.round is half-to-even, like torch.round
    np.testing.assert_array_equal(res.qweight.numpy(), q.astype(np.uint8))
    assert res.perm is None and (res.zeros is None) == sym
