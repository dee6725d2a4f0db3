"""Per-slice scale refit: never increases the loss it minimises, and reaches the least-squares optimum."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from matq_compile.config import QuantSpec
from matq_compile.quant import quantize_weight
from matq_compile.quant.refit import refit_scales
from matq_compile.slicing import dequant_parent

from .test_gptq import calib, synthetic_layer


def layer_loss(W: torch.Tensor, What: torch.Tensor, H: torch.Tensor) -> np.ndarray:
    E = (W.double() - What.double()).numpy()
    return np.einsum("oi,ij,oj->o", E, H.double().numpy(), E)  # per row, independent of the module's code


@pytest.mark.parametrize("spec", [QuantSpec(refit=(8, 6, 4, 3, 2)),
                                  QuantSpec(feedback="per-slice", refit=(8, 5, 3), act_order=True, group_size=32),
                                  QuantSpec(sym=False, refit=(8, 4, 2)),
                                  QuantSpec(method="gptq", bits=4, refit=(4,))])
def test_refit_never_increases_the_layer_loss(spec):
    W, H = synthetic_layer(3, out=48, inn=192)
    res = quantize_weight(W, H, spec)
    improved = 0.0
    for r in spec.refit:
        before = layer_loss(W, res.dequant(r, spec.slice_rule, refit=False), H)
        after = layer_loss(W, res.dequant(r, spec.slice_rule, refit=True), H)
        assert np.all(after <= before * (1 + 1e-12)), r
        improved = max(improved, 1 - after.sum() / before.sum())
        assert res.slice_scales[r].dtype == torch.float16 and res.slice_scales[r].shape == res.scales.shape
    assert improved > 0.01  # the refit does something: some slice's loss drops by more than 1 %
    assert torch.equal(res.qweight, quantize_weight(W, H, QuantSpec(**{**spec.to_dict(), "refit": ()})).qweight)


def test_refit_reaches_the_least_squares_optimum():
    """Per row, the multipliers m minimise ‖(w - Σ_g m_g B_g) L‖ with H = L Lᵀ: solve that with numpy lstsq and
    compare losses (the module's scales are fp16-rounded, so allow a tiny excess)."""
    W, H = calib(6, 128, seed=21)
    res = quantize_weight(W, H, QuantSpec(group_size=32))
    r, g = 3, 32
    new = refit_scales(W, H, res.qweight, res.scales, None, r, "round")
    base = res.dequant(r, "round").double().numpy()
    L = np.linalg.cholesky(H.double().numpy())
    for row in range(W.shape[0]):
        A = np.stack([np.where(np.arange(128) // g == k, base[row], 0.0) @ L for k in range(128 // g)], axis=1)
        m, *_ = np.linalg.lstsq(A, W[row].double().numpy() @ L, rcond=None)
        best = np.sum((W[row].double().numpy() @ L - A @ m) ** 2)
        got = res.qweight[row:row + 1]
        ours = dequant_parent(got[0], new[row].double().repeat_interleave(g), 128.0, r, "round").numpy()
        loss = (W[row].double().numpy() - ours) @ H.double().numpy() @ (W[row].double().numpy() - ours)
        assert loss <= best * (1 + 2e-3) + 1e-12
        assert best <= loss * (1 + 1e-9)  # lstsq is the optimum


def test_refit_spec_is_validated():
    with pytest.raises(ValueError, match="refit needs a calibration Hessian"):
        QuantSpec(method="rtn", refit=(8,))
    with pytest.raises(ValueError, match="integers in 2..8"):
        QuantSpec(refit=(9,))
    assert QuantSpec(refit=(3, 8)).refit == (8, 3)
