"""Layer Hessian H = (2/N) Σ x xᵀ as a running mean, and its preparation for GPTQ (spec section 2)."""
from __future__ import annotations

import logging

import torch

from matq_compile.config import QuantSpec

log = logging.getLogger(__name__)


def accumulate(H: torch.Tensor | None, n: int, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Fold a batch x [..., in] into the running mean H [in, in] over n tokens so far; returns (H, n + batch).

    H <- H * n/(n+b) + (2/(n+b)) Σ_batch x xᵀ, in fp32 (the rescale keeps H O(1) however many tokens arrive).
    """
    x = x.detach().reshape(-1, x.shape[-1]).float()
    b = x.shape[0]
    if H is None:
        H = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float32)
    if H.shape != (x.shape[1], x.shape[1]):
        raise ValueError(f"Hessian shape {tuple(H.shape)} does not match input features {x.shape[1]}")
    if b == 0:
        return H, n
    H = H * (n / (n + b))
    x = x * (2.0 / (n + b)) ** 0.5
    H = H + x.t() @ x
    return H, n + b


def dead_columns(H: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Boolean [in]: inputs that never fire (H_ii = 0) or whose weight column is all zero."""
    return (torch.diagonal(H) == 0) | (W == 0).all(dim=0)


def prepare(H: torch.Tensor, W: torch.Tensor, spec: QuantSpec
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Dead inputs, damping and act-order. Returns (H damped, W, perm) in processing order; inputs untouched.

    Dead input i: row/column i of H zeroed, H_ii = 1, W[:, i] = 0. Damping: H_ii += rel_damp * mean(diag H).
    Act-order: perm = argsort(diag H, descending, stable) applied to W's columns and H's rows and columns.
    """
    _check(H, W)
    H = H.detach().float().clone()
    W = W.detach().float().clone()
    dead = dead_columns(H, W)
    if dead.any():
        log.debug("%d dead input columns", int(dead.sum()))
        H[dead, :] = 0
        H[:, dead] = 0
        H[dead, dead] = 1
        W[:, dead] = 0
    perm = None
    if spec.act_order:
        perm = torch.argsort(torch.diagonal(H), descending=True, stable=True)
        W = W[:, perm]
        H = H[perm][:, perm]
    idx = torch.arange(H.shape[0])
    H[idx, idx] += spec.rel_damp * torch.mean(torch.diagonal(H))
    return H, W, perm


def inverse_cholesky(H: torch.Tensor, rel_damp: float = 1e-2, retries: int = 4) -> torch.Tensor:
    """U = upper-Cholesky(H⁻¹) via cholesky_inverse(cholesky(H)); adds damping if H is not positive definite."""
    extra = 0.0
    for attempt in range(retries + 1):
        Hd = H
        if extra:
            Hd = H.clone()
            idx = torch.arange(H.shape[0])
            Hd[idx, idx] += extra * torch.mean(torch.diagonal(H))
        try:
            Hinv = torch.cholesky_inverse(torch.linalg.cholesky(Hd))
            return torch.linalg.cholesky(Hinv, upper=True)
        except torch.linalg.LinAlgError:
            extra = max(rel_damp, 1e-2) * 10 ** (attempt + 1)
            log.warning("Hessian not positive definite; retrying with extra damping %.3g", extra)
    raise ValueError("Hessian is not positive definite even with extra damping; check the calibration inputs")


def _check(H: torch.Tensor, W: torch.Tensor) -> None:
    if W.dim() != 2:
        raise ValueError(f"weight must be 2-D [out, in], got shape {tuple(W.shape)}")
    if H.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"Hessian shape {tuple(H.shape)} does not match weight in_features {W.shape[1]}")
    if not torch.isfinite(H).all():
        raise ValueError("Hessian contains NaN or Inf")
    if not torch.isfinite(W).all():
        raise ValueError("weight contains NaN or Inf")
