"""Per-layer sensitivity table (spec section 5) against a float64 numpy computation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from matq_compile.config import QuantSpec
from matq_compile.quant import quantize_weight
from matq_compile.quant.sensitivity import layer_sensitivity


def test_matches_numpy_float64(rng):
    X = rng.standard_normal((300, 64)).astype(np.float32)
    H = 2 * X.T.astype(np.float64) @ X / 300
    W = rng.standard_normal((16, 64)).astype(np.float32)
    spec = QuantSpec(act_order=True, group_size=32)
    res = quantize_weight(torch.from_numpy(W), torch.from_numpy(H).float(), spec)
    out = layer_sensitivity(torch.from_numpy(W), res, torch.from_numpy(H), spec.levels, "round")
    assert out["numel"] == 16 * 64 and out["shape"] == [16, 64] and out["group"] == 32
    W0 = W.astype(np.float64)
    for r in spec.levels:
        E = W0 - res.dequant(r, "round").double().numpy()
        loss = np.trace(E @ H @ E.T)
        assert out["loss"][str(r)] == pytest.approx(loss, rel=1e-10)
        assert out["nmse"][str(r)] == pytest.approx(loss / np.trace(W0 @ H @ W0.T), rel=1e-10)
        assert out["rel_mse"][str(r)] == pytest.approx((E**2).sum() / (W0**2).sum(), rel=1e-10)
    nmse = [out["nmse"][str(r)] for r in spec.levels]
    assert nmse == sorted(nmse, reverse=True)  # more bits, less error


def test_shape_mismatch_rejected():
    W = torch.randn(4, 32)
    res = quantize_weight(W, None, QuantSpec(method="rtn", group_size=32))
    with pytest.raises(ValueError, match="does not match quantized shape"):
        layer_sensitivity(torch.randn(4, 64), res, torch.eye(64), (4,))
