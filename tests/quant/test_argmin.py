"""Joint multi-slice argmin: windowed fast path == exhaustive reference == float64 brute force."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from matq_compile import slicing
from matq_compile.quant import argmin, grid

CASES = [((8, 4, 3), (1.0, 1.0, 1.0)), ((8, 4, 2), (1.0, 1.0, 1.0)), ((8, 3), (0.3, 2.0)),
         ((8, 6, 4, 3, 2), (1.0, 0.5, 2.0, 1.0, 3.0)), ((8, 7, 5), (1.0, 1.0, 1.0)), ((8, 4, 3), (0.01, 1.0, 10.0))]


def columns(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random values, fp16-exact scales, half sym (z = 128) half asym zeros; ~20 % land outside the grid."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.rand(n, generator=g) * 3
    s = (torch.rand(n, generator=g) * 0.02 + 0.001).half().float()
    z = torch.randint(0, 256, (n,), generator=g).float()
    z[: n // 2] = 128
    return x, s, z


@pytest.mark.parametrize("rule", ["round", "midpoint"])
@pytest.mark.parametrize("bits,lams", CASES)
def test_windowed_equals_exhaustive(bits, lams, rule):
    ss = argmin.SliceSet.make(bits, lams, (1.0 / len(bits),) * len(bits), rule)
    x, s, z = columns(40000, seed=len(bits))
    t = x / s + z
    assert ((t > 255.5) | (t < -0.5)).sum() > 3000  # saturated columns are really exercised
    assert torch.equal(argmin.windowed(x, s, z, ss), argmin.exhaustive(x, s, z, ss, chunk=7000))


def test_candidates_are_few_and_within_window():
    ss = argmin.SliceSet.make((8, 4, 3), (1.0,) * 3, (1 / 3,) * 3)
    c = torch.arange(256)[:, None]
    assert ss.candidates.shape[1] <= 13  # versus 65 codes in the window
    assert torch.all((ss.candidates - c).abs() <= ss.window)
    assert torch.all(ss.candidates[:, 1:] >= ss.candidates[:, :-1])  # ascending: ties go to the lowest code


@pytest.mark.parametrize("rule", ["round", "midpoint"])
def test_exhaustive_is_the_float64_minimum(rule, rng):
    bits, lams = (8, 4, 2), (1.0, 2.0, 0.5)
    ss = argmin.SliceSet.make(bits, lams, (1 / 3,) * 3, rule)
    x, s, z = columns(500, seed=7)
    q = argmin.exhaustive(x, s, z, ss).numpy()
    codes = np.arange(256, dtype=np.uint8)
    X, S, Z = (v.double().numpy()[:, None] for v in (x, s, z))
    obj = sum(lam * (X - slicing.dequant_parent(codes[None, :], S, Z, r, rule)) ** 2 for r, lam in zip(bits, lams))
    best = obj.min(axis=1)
    chosen = obj[np.arange(500), q]
    np.testing.assert_allclose(chosen, best, rtol=1e-5, atol=1e-12)  # fp32 scoring: optimal up to fp32 rounding


def test_ties_go_to_the_lowest_code():
    # Without an 8-bit slice every code of a 4-bit bucket scores the same: the lowest one must win. Midpoint
    # 4-bit values around 0 are -8 (codes 112..127) and +8 (codes 128..143); x = 0 ties between the buckets.
    ss = argmin.SliceSet.make((4,), (1.0,), (1.0,), "midpoint")
    x = torch.tensor([0.0, 0.3, -0.7])
    s, z = torch.ones(3), torch.full((3,), 128.0)
    q = argmin.exhaustive(x, s, z, ss)
    assert q.tolist() == [112, 128, 112]
    assert torch.equal(argmin.windowed(x, s, z, ss), q)


def test_single_8bit_slice_is_round_to_nearest():
    ss = argmin.SliceSet.make((8,), (1.0,), (1.0,))
    x, s, z = columns(20000, seed=3)
    assert torch.equal(argmin.windowed(x, s, z, ss), grid.rtn_codes(x, s, z).long())


def test_propagated_error_is_mu_weighted_mean_of_residuals():
    ss = argmin.SliceSet.make((8, 4), (1.0, 1.0), (0.25, 0.75), "round")
    x, s, z = columns(100, seed=5)
    q = argmin.windowed(x, s, z, ss)
    w8 = slicing.dequant_parent(q, s.double(), z.double(), 8)
    w4 = slicing.dequant_parent(q, s.double(), z.double(), 4)
    want = 0.25 * (x.double() - w8) + 0.75 * (x.double() - w4)
    torch.testing.assert_close(argmin.propagated_error(x, q, s, z, ss).double(), want, rtol=1e-5, atol=1e-6)


def targets(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One column as |R| per-slice targets: a shared value plus per-slice drifts from 0 to ~100 codes."""
    x, s, z = columns(n, seed)
    g = torch.Generator().manual_seed(seed + 100)
    spread = torch.tensor([0.0, 1.0, 8.0, 40.0, 100.0])[torch.randint(0, 5, (n,), generator=g)]
    return x[None, :] + torch.randn(k, n, generator=g) * spread * s, s, z


@pytest.mark.parametrize("rule", ["round", "midpoint"])
@pytest.mark.parametrize("bits,lams", CASES)
def test_windowed_multi_equals_exhaustive(bits, lams, rule):
    ss = argmin.SliceSet.make(bits, lams, (1.0 / len(bits),) * len(bits), rule)
    T, s, z = targets(30000, len(bits), seed=len(bits))
    got = argmin.windowed_multi(T, s, z, ss)
    assert torch.equal(got, argmin.exhaustive_multi(T, s, z, ss, chunk=7000))
    # one shared target reduces to the single-target argmin
    same = T[:1].expand_as(T).contiguous()
    assert torch.equal(argmin.windowed_multi(same, s, z, ss), argmin.windowed(T[0], s, z, ss))


@pytest.mark.parametrize("rule", ["round", "midpoint"])
def test_exhaustive_multi_is_the_float64_minimum(rule):
    bits, lams = (8, 4, 3), (2.0, 1.0, 0.5)
    ss = argmin.SliceSet.make(bits, lams, (1 / 3,) * 3, rule)
    T, s, z = targets(3000, 3, seed=7)
    q = torch.arange(256, dtype=torch.int32)
    total = sum(lam * (T[j].double()[:, None] - slicing.dequant_parent(q[None, :], s.double()[:, None],
                                                                        z.double()[:, None], r, rule)) ** 2
                for j, (r, lam) in enumerate(zip(bits, lams)))
    best = argmin.exhaustive_multi(T, s, z, ss)
    got = total.gather(1, best[:, None]).squeeze(1)
    assert torch.all(got <= total.min(dim=1).values * (1 + 1e-5) + 1e-12)


@pytest.mark.parametrize("rule", ["round", "midpoint"])
@pytest.mark.parametrize("lams", [(64.0, 1.0, 1.0), (16.0, 1.0, 1.0), (4.0, 1.0, 0.5)])
def test_narrow_window_equals_exhaustive(lams, rule):
    """A heavy 8-bit weight and small drifts (as in the per-slice GPTQ loop): columns of 64 rows mostly take the
    narrow code window, which must find exactly the exhaustive minimum."""
    bits = (8, 4, 3)
    ss = argmin.SliceSet.make(bits, lams, (1 / 3,) * 3, rule)
    g = torch.Generator().manual_seed(5)
    narrow = 0
    for col in range(200):
        s = (torch.rand(64, generator=g) * 0.02 + 0.001).half().float()
        z = torch.full((64,), 128.0)
        x = torch.randn(64, generator=g) * s * 40  # inside the grid, as GPTQ's group scales make it
        T = x[None, :] + torch.randn(3, 64, generator=g) * s * float(col % 5)
        c8 = grid.rtn_codes(T[0], s, z, 8).to(torch.int64)[:, None]
        narrow += argmin.narrow_width(T, s, z, ss, c8) is not None
        assert torch.equal(argmin.windowed_multi(T, s, z, ss), argmin.exhaustive_multi(T, s, z, ss)), col
    assert narrow > (50 if lams[0] >= 16 else 10)
