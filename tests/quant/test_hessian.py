"""Hessian accumulation and preparation (spec section 2) against float64 references."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from matq_compile.config import QuantSpec
from matq_compile.quant import hessian


def test_running_mean_equals_two_over_n_xtx(rng):
    X = rng.standard_normal((3, 50, 24)).astype(np.float32)  # [batch, seq, in]
    H, n = None, 0
    for b in range(3):  # uneven batches: one sequence, then a split of another
        H, n = hessian.accumulate(H, n, torch.from_numpy(X[b, :17] if b == 1 else X[b]))
        if b == 1:
            H, n = hessian.accumulate(H, n, torch.from_numpy(X[b, 17:]))
    flat = X.reshape(-1, 24).astype(np.float64)
    assert n == 150 and H.dtype == torch.float32
    np.testing.assert_allclose(H.numpy(), 2.0 / 150 * flat.T @ flat, rtol=1e-5, atol=1e-5)


def test_accumulate_rejects_shape_mismatch():
    H, n = hessian.accumulate(None, 0, torch.ones(4, 8))
    with pytest.raises(ValueError, match="does not match input features 6"):
        hessian.accumulate(H, n, torch.ones(4, 6))


def test_prepare_dead_columns_and_damping():
    H = torch.diag(torch.tensor([2.0, 0.0, 4.0, 6.0]))
    H[0, 2] = H[2, 0] = 1.0
    W = torch.tensor([[1.0, 2.0, 0.0, 3.0], [4.0, 5.0, 0.0, 6.0]])
    Hd, Wp, perm = hessian.prepare(H, W, QuantSpec(rel_damp=0.1))
    assert perm is None
    assert torch.equal(Wp[:, 1], torch.zeros(2)) and torch.equal(Wp[:, 2], torch.zeros(2))  # H_11 = 0; W[:, 2] = 0
    damp = 0.1 * (2.0 + 1.0 + 1.0 + 6.0) / 4  # mean of the diagonal after dead columns get H_ii = 1
    want = torch.diag(torch.tensor([2.0, 1.0, 1.0, 6.0])) + damp * torch.eye(4)
    assert torch.allclose(Hd, want)
    assert torch.equal(W[:, 1], torch.tensor([2.0, 5.0]))  # inputs untouched


def test_prepare_act_order_permutes_consistently(rng):
    X = torch.from_numpy(rng.standard_normal((200, 12)).astype(np.float32)) * torch.linspace(0.1, 3, 12)
    H, _ = hessian.accumulate(None, 0, X)
    W = torch.from_numpy(rng.standard_normal((5, 12)).astype(np.float32))
    Hd0, _, _ = hessian.prepare(H, W, QuantSpec())
    Hd, Wp, perm = hessian.prepare(H, W, QuantSpec(act_order=True))
    assert torch.equal(perm, torch.argsort(torch.diagonal(H), descending=True))
    assert torch.all(torch.diagonal(Hd)[:-1] >= torch.diagonal(Hd)[1:])
    assert torch.equal(Wp, W[:, perm]) and torch.allclose(Hd, Hd0[perm][:, perm])


def test_prepare_rejects_bad_inputs():
    with pytest.raises(ValueError, match="does not match weight in_features 3"):
        hessian.prepare(torch.eye(4), torch.ones(2, 3), QuantSpec())
    with pytest.raises(ValueError, match="NaN or Inf"):
        hessian.prepare(torch.full((3, 3), float("nan")), torch.ones(2, 3), QuantSpec())


def test_inverse_cholesky_is_upper_factor_of_inverse(rng):
    A = torch.from_numpy(rng.standard_normal((30, 16))).float()
    H = A.T @ A + 0.1 * torch.eye(16)
    U = hessian.inverse_cholesky(H)
    assert torch.equal(U, torch.triu(U))
    np.testing.assert_allclose((U.T @ U).double().numpy(), np.linalg.inv(H.double().numpy()), rtol=1e-3, atol=1e-4)
