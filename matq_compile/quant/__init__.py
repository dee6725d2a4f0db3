"""Quantizer numerical core: one linear layer in, one sliceable parent (QuantResult) out."""
from __future__ import annotations

import torch

from matq_compile.config import QuantSpec
from matq_compile.quant.result import QuantResult

__all__ = ["QuantResult", "quantize_weight"]


def quantize_weight(W: torch.Tensor, H: torch.Tensor | None, spec: QuantSpec) -> QuantResult:
    """Quantize W [out, in] with calibration Hessian H [in, in] (unused by rtn) according to spec.method."""
    from matq_compile.quant import gptq, hessian, refit, rtn

    if not isinstance(W, torch.Tensor) or W.dim() != 2:
        raise ValueError(f"weight must be a 2-D tensor [out, in], got {getattr(W, 'shape', type(W))}")
    spec.check_group(W.shape[1])
    if spec.method == "rtn":
        if not torch.isfinite(W).all():
            raise ValueError("weight contains NaN or Inf")
        return QuantResult(*rtn.rtn_quantize(W, spec))
    if H is None:
        raise ValueError(f"method {spec.method} needs a Hessian; got None")
    with gptq.single_thread():
        Hd, Wp, perm = hessian.prepare(H, W, spec)
        U = hessian.inverse_cholesky(Hd, spec.rel_damp)
        q, s, z = gptq.gptq_quantize(Wp, U, spec, perm)
        if spec.static_groups:
            perm = None  # codes came back in the original column order
        # refit against the original weights and the undamped Hessian (the loss the sensitivity table reports)
        W0, H0 = (W, H) if perm is None else (W[:, perm], H[perm][:, perm])
        fitted = {b: refit.refit_scales(W0.float(), H0.float(), q, s, z, b, spec.slice_rule) for b in spec.refit}
    return QuantResult(q, s, z, None if perm is None else perm.to(torch.int32), fitted)
