"""Per-layer proxy losses for every level (spec section 5): the table the bit-width search reads."""
from __future__ import annotations

from typing import Any

import torch

from matq_compile.quant.result import QuantResult
from matq_compile.slicing import check_bits, check_rule


def layer_sensitivity(W0: torch.Tensor, result: QuantResult, H: torch.Tensor, levels: tuple[int, ...] | list[int],
                      rule: str = "round") -> dict[str, Any]:
    """{numel, shape, group, loss, nmse, rel_mse}; the last three map str(r) -> float for every r in levels.

    loss[r] = tr(E_r H E_rᵀ) with E_r = W0 - Ŵ_r (original column order, H undamped); nmse[r] = loss[r] /
    tr(W0 H W0ᵀ); rel_mse[r] = ‖E_r‖² / ‖W0‖². All in float64; None where the denominator
    is 0 and the error is not (JSON has no inf).
    """
    check_rule(rule)
    W0 = W0.detach().double()
    if tuple(W0.shape) != result.shape:
        raise ValueError(f"weight shape {tuple(W0.shape)} does not match quantized shape {result.shape}")
    if H.shape != (W0.shape[1], W0.shape[1]):
        raise ValueError(f"Hessian shape {tuple(H.shape)} does not match in_features {W0.shape[1]}")
    Hd = H.detach().double()
    ref = float(((W0 @ Hd) * W0).sum())
    norm = float(W0.square().sum())
    out: dict[str, Any] = {"numel": W0.numel(), "shape": list(W0.shape), "group": result.group_size,
                           "loss": {}, "nmse": {}, "rel_mse": {}}
    for r in sorted({check_bits(b) for b in levels}):
        E = W0 - result.dequant(r, rule).double()
        loss = float(((E @ Hd) * E).sum())
        sq = float(E.square().sum())
        out["loss"][str(r)] = loss
        out["nmse"][str(r)] = loss / ref if ref > 0 else (0.0 if loss == 0 else None)
        out["rel_mse"][str(r)] = sq / norm if norm > 0 else (0.0 if sq == 0 else None)
    return out
